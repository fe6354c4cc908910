"""Build registry content in the test MLflow server with the plain MLflow client."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

from mlflow.entities import Metric, Param


def experiment_id(client, name: str = "tests") -> str:
    experiment = client.get_experiment_by_name(name)
    return experiment.experiment_id if experiment else client.create_experiment(name)


def make_run(client, metrics: dict | None = None, params: dict | None = None, *, user: str = "") -> str:
    """A run; `user` is who MLflow records as its author (the mlflow.user tag, as MLflow's own
    fluent API sets it from LOGNAME)."""
    run = client.create_run(experiment_id(client), tags={"mlflow.user": user} if user else None)
    now = int(time.time() * 1000)
    client.log_batch(
        run.info.run_id,
        metrics=[Metric(k, float(v), now, 0) for k, v in (metrics or {}).items()],
        params=[Param(k, str(v)) for k, v in (params or {}).items()],
    )
    return run.info.run_id


def make_version(client, name: str, *, metrics=None, params=None, tags=None, run=True, user: str = "") -> int:
    if not _exists(client, name):
        client.create_registered_model(name)
    run_id = make_run(client, metrics, params, user=user) if run else None
    source = f"runs:/{run_id}/model" if run_id else "s3://tests/model"
    return int(client.create_model_version(name, source, run_id=run_id, tags=tags or {}).version)


def make_versions(client, name: str, count: int, *, threads: int = 8) -> None:
    """Many versions quickly: they share one run."""
    client.create_registered_model(name)
    run_id = make_run(client, {"accuracy": 0.5})
    with ThreadPoolExecutor(threads) as pool:
        list(
            pool.map(
                lambda _: client.create_model_version(name, f"runs:/{run_id}/model", run_id=run_id),
                range(count),
            )
        )


def _exists(client, name: str) -> bool:
    return bool(client.search_registered_models(filter_string=f"name = '{name}'", max_results=1))


def stage(client, name: str, version: int, target: str, archive: bool = False) -> None:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        client.transition_model_version_stage(name, str(version), target, archive_existing_versions=archive)
