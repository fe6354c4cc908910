"""Benchmark: how much slower is our registry sync than simply reading the registry?

Starts its own MLflow server (SQLite store, in a temporary directory), fills it with M models x V
versions, each version backed by a real run with 2-3 metrics and 2 params, then measures

  (a)  the bare MLflow client doing the reading work of a sync: every registered-model page,
       every model-version page, and the runs of every version fetched the way our gateway does
       (search_runs with `attributes.run_id IN (...)`, 100 ids a call, across all experiments);
       "paging only" is the same without the runs, printed for information;
  (b)  registry_sync.services.sync_registry into an empty mirror;
  (c)  sync_registry again with nothing changed in MLflow (it must create and update nothing);

each the best of --repeat runs (time.perf_counter), plus the SQL queries (b) and (c) issue,
counted in one extra run each. Targets: b/a <= 1.5 and c/a <= 1.2. The mirror lives in a
throwaway SQLite database; var/ and the developer's databases are never touched.

Run from the repository root:

    .venv/bin/python bench/sync.py                      # 1000 models x 10 versions
    .venv/bin/python bench/sync.py --models 100 --versions-per-model 10
    .venv/bin/python bench/sync.py --profile            # also cProfile one run of (b) and (c)
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import random
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar, cast

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import fmt_seconds, mlflow_server, setup_django  # noqa: E402

TARGET_B = 1.5
TARGET_C = 1.2
RUN_BATCH = 100  # as registry_sync.gateway.get_runs_data
T = TypeVar("T")


# --- populating MLflow -------------------------------------------------------------------------


def populate(url: str, *, models: int, versions: int, experiments: int, threads: int) -> float:
    """Create the models, one run per version (create_run + log_batch) and the versions."""
    from mlflow import MlflowClient
    from mlflow.entities import Metric, Param

    setup = MlflowClient(tracking_uri=url, registry_uri=url)
    experiment_ids = [setup.create_experiment(f"bench-experiment-{i:03d}") for i in range(experiments)]
    local = threading.local()
    lock = threading.Lock()
    done = {"versions": 0, "printed": 0.0}
    total = models * versions
    started = time.perf_counter()

    def client() -> MlflowClient:
        if not hasattr(local, "client"):
            local.client = MlflowClient(tracking_uri=url, registry_uri=url)
        return local.client

    def one_model(index: int) -> None:
        mlflow = client()
        rng = random.Random(index)
        name = f"bench-model-{index:05d}"
        experiment_id = experiment_ids[index % len(experiment_ids)]
        mlflow.create_registered_model(
            name, tags={"team": f"team-{index % 7}"}, description=f"Benchmark model {index}"
        )
        for number in range(1, versions + 1):
            run = mlflow.create_run(experiment_id, run_name=f"{name}-v{number}")
            run_id = run.info.run_id
            now = int(time.time() * 1000)
            metrics = [
                Metric("accuracy", rng.uniform(0.6, 0.99), now, 0),
                Metric("loss", rng.uniform(0.01, 0.5), now, 0),
            ]
            if number % 2:
                metrics.append(Metric("f1", rng.uniform(0.5, 0.95), now, 0))
            params = [
                Param("learning_rate", str(rng.choice([0.1, 0.01, 0.001]))),
                Param("depth", str(number)),
            ]
            mlflow.log_batch(run_id, metrics=metrics, params=params)
            mlflow.create_model_version(
                name,
                f"runs:/{run_id}/model",
                run_id=run_id,
                tags={"origin": "bench"},
                await_creation_for=0,
            )
            with lock:
                done["versions"] += 1
                elapsed = time.perf_counter() - started
                if elapsed - done["printed"] >= 10 or done["versions"] == total:
                    done["printed"] = elapsed
                    rate = done["versions"] / elapsed
                    left = (total - done["versions"]) / rate
                    print(
                        f"  populated {done['versions']:>6}/{total} versions "
                        f"in {elapsed:6.1f} s ({rate:.0f}/s, ~{left:.0f} s left)",
                        flush=True,
                    )
        mlflow.set_registered_model_alias(name, "champion", str(versions))

    with ThreadPoolExecutor(max_workers=threads) as pool:
        for future in [pool.submit(one_model, index) for index in range(models)]:
            future.result()  # re-raise the first failure
    return time.perf_counter() - started


# --- (a) the bare client -----------------------------------------------------------------------


@dataclass
class ReadResult:
    models: int = 0
    versions: int = 0
    runs: int = 0
    calls: dict[str, int] = field(default_factory=dict)


def read_registry_bare(url: str, *, with_runs: bool) -> ReadResult:
    """The reading work of a sync, with nothing but MlflowClient."""
    from mlflow import MlflowClient
    from mlflow.entities import ViewType

    client = MlflowClient(tracking_uri=url, registry_uri=url)
    result = ReadResult(calls={"search_registered_models": 0, "search_model_versions": 0, "search_runs": 0})
    token = None
    while True:
        page = client.search_registered_models(max_results=1000, page_token=token)
        result.calls["search_registered_models"] += 1
        result.models += len(page)
        token = page.token
        if not token:
            break
    token = None
    while True:
        page = client.search_model_versions(max_results=10000, page_token=token)
        result.calls["search_model_versions"] += 1
        result.versions += len(page)
        if with_runs:
            # As gateway.get_runs_data, once per version page: all experiment ids, then the runs.
            experiment_ids: list[str] = []
            exp_token = None
            while True:
                experiments = client.search_experiments(
                    view_type=ViewType.ALL, max_results=1000, page_token=exp_token
                )
                experiment_ids.extend(e.experiment_id for e in experiments)
                exp_token = experiments.token
                if not exp_token:
                    break
            wanted = sorted({mv.run_id for mv in page if mv.run_id})
            for start in range(0, len(wanted), RUN_BATCH):
                batch = wanted[start : start + RUN_BATCH]
                id_list = ", ".join(f"'{run_id}'" for run_id in batch)
                run_token = None
                while True:
                    runs = client.search_runs(
                        experiment_ids,
                        filter_string=f"attributes.run_id IN ({id_list})",
                        max_results=len(batch),
                        page_token=run_token,
                    )
                    result.calls["search_runs"] += 1
                    for run in runs:
                        _ = (dict(run.data.metrics), dict(run.data.params))
                        result.runs += 1
                    run_token = runs.token
                    if not run_token:
                        break
        token = page.token
        if not token:
            break
    return result


# --- (b) and (c) our sync ----------------------------------------------------------------------


class GatewayClock:
    """Adds up the wall time spent inside the gateway's reading calls during a sync."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.calls = 0

    def install(self) -> None:
        from registry_sync import gateway

        gateway.iter_registered_model_pages = self._wrap_iter(gateway.iter_registered_model_pages)
        gateway.iter_model_version_pages = self._wrap_iter(gateway.iter_model_version_pages)
        gateway.get_runs_data = self._wrap_call(gateway.get_runs_data)

    def reset(self) -> None:
        self.seconds, self.calls = 0.0, 0

    def _wrap_iter(self, function: Callable[..., Iterator]) -> Callable[..., Iterator]:
        def wrapper(*args: object, **kwargs: object) -> Iterator:
            iterator = function(*args, **kwargs)
            while True:
                started = time.perf_counter()
                try:
                    item = next(iterator)
                except StopIteration:
                    self.seconds += time.perf_counter() - started
                    return
                self.seconds += time.perf_counter() - started
                self.calls += 1
                yield item

        return wrapper

    def _wrap_call(self, function: Callable) -> Callable:
        def wrapper(*args: object, **kwargs: object) -> object:
            started = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - started
                self.calls += 1

        return wrapper


def clear_mirror() -> None:
    from registry_sync.models import DriftEvent, ModelVersion, RegisteredModel, SyncRun

    DriftEvent.objects.all().delete()
    ModelVersion.objects.all().delete()
    RegisteredModel.objects.all().delete()
    SyncRun.objects.all().delete()


def run_sync(expect_created: int | None, expect_unchanged: bool) -> object:
    from registry_sync.services import sync_registry

    run = sync_registry(trigger="command")
    if run.error:
        raise RuntimeError(f"sync failed: {run.error}")
    if expect_created is not None and run.created != expect_created:
        raise RuntimeError(f"full sync created {run.created} versions, expected {expect_created}")
    if expect_unchanged and (run.created or run.updated):
        raise RuntimeError(
            f"re-sync of an unchanged registry wrote: created {run.created}, updated {run.updated}"
        )
    return run


def count_queries(function: Callable[[], object]) -> int:
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    with CaptureQueriesContext(connection) as context:
        function()
    if len(context.captured_queries) >= connection.queries_limit:
        print(f"  warning: {connection.queries_limit}+ queries, the count is a lower bound", flush=True)
    return len(context.captured_queries)


def profile(function: Callable[[], object], path: Path, label: str, lines: int) -> None:
    profiler = cProfile.Profile()
    profiler.runcall(function)
    profiler.dump_stats(path)
    for sort in ("cumulative", "tottime"):
        out = io.StringIO()
        stats = pstats.Stats(profiler, stream=out).strip_dirs().sort_stats(sort)
        stats.print_stats(lines)
        print(f"\n--- cProfile of {label}, by {sort} ({path}, kept with --keep) ---")
        print(out.getvalue().split("\n\n", 2)[-1].rstrip())


def best_of(
    repeat: int, label: str, function: Callable[[], T], before: Callable[[], None] | None = None
) -> tuple[float, list[float], T]:
    times: list[float] = []
    last: T | None = None
    for index in range(repeat):
        if before:
            before()
        started = time.perf_counter()
        last = function()
        times.append(time.perf_counter() - started)
        print(f"  {label} run {index + 1}/{repeat}: {times[-1]:.2f} s", flush=True)
    return min(times), times, cast(T, last)


# --- main ----------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", type=int, default=1000)
    parser.add_argument("--versions-per-model", type=int, default=10)
    parser.add_argument("--experiments", type=int, default=10, help="experiments the runs are spread over")
    parser.add_argument("--threads", type=int, default=8, help="client threads populating MLflow")
    parser.add_argument(
        "--repeat", type=int, default=3, choices=range(1, 11), metavar="N", help="best of N runs"
    )
    parser.add_argument("--profile", action="store_true", help="cProfile one extra run of (b) and (c)")
    parser.add_argument("--profile-lines", type=int, default=30)
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = parser.parse_args()
    models, per_model = args.models, args.versions_per_model
    total = models * per_model

    workdir = Path(tempfile.mkdtemp(prefix="bench-sync-"))
    print(f"bench/sync.py: {models} models x {per_model} versions = {total} versions; workdir {workdir}")
    try:
        started = time.perf_counter()
        with mlflow_server(workdir / "mlflow") as url:
            print(f"MLflow {url} up in {time.perf_counter() - started:.1f} s; populating ...", flush=True)
            populate_seconds = populate(
                url, models=models, versions=per_model, experiments=args.experiments, threads=args.threads
            )
            print(f"populated in {populate_seconds:.1f} s", flush=True)

            # Settings are read at start-up: Django is set up only now, with the server's URL.
            setup_django(workdir / "django", mlflow_url=url)
            from django.conf import settings

            # DEBUG=true only eases start-up (no SECRET_KEY); a sync in production runs without
            # Django's query log, so the timed runs do too. Query counts force the debug cursor.
            settings.DEBUG = False
            from registry_sync import gateway  # noqa: F401 - applies its MLflow client settings

            print("(a) bare MLflow client", flush=True)
            a_paging, a_paging_times, paged = best_of(
                args.repeat, "paging only", lambda: read_registry_bare(url, with_runs=False)
            )
            a_full, a_times, read = best_of(
                args.repeat, "paging + runs", lambda: read_registry_bare(url, with_runs=True)
            )
            if (read.models, read.versions, read.runs, paged.versions) != (models, total, total, total):
                raise RuntimeError(
                    f"MLflow holds {read.models} models, {read.versions} versions, {read.runs} runs"
                )

            clock = GatewayClock()
            clock.install()
            b_gateway: list[float] = []
            c_gateway: list[float] = []

            def full_sync() -> None:
                clock.reset()
                run_sync(expect_created=total, expect_unchanged=False)
                b_gateway.append(clock.seconds)

            def re_sync() -> None:
                clock.reset()
                run_sync(expect_created=None, expect_unchanged=True)
                c_gateway.append(clock.seconds)

            print("(b) sync_registry into an empty mirror", flush=True)
            b, b_times, _ = best_of(args.repeat, "full sync", full_sync, before=clear_mirror)
            print("(c) sync_registry, nothing changed", flush=True)
            c, c_times, _ = best_of(args.repeat, "re-sync", re_sync)

            print("counting SQL queries (one extra run each)", flush=True)
            clear_mirror()
            b_queries = count_queries(full_sync)
            c_queries = count_queries(re_sync)
            b_mlflow = b_gateway[b_times.index(b)]
            c_mlflow = c_gateway[c_times.index(c)]

            if args.profile:
                clear_mirror()
                profile(full_sync, workdir / "sync_full.prof", "(b) full sync", args.profile_lines)
                profile(re_sync, workdir / "sync_unchanged.prof", "(c) re-sync", args.profile_lines)

        rows = [
            ("(a) bare client: paging + runs", a_full, None, ""),
            ("(a0) bare client: paging only", a_paging, None, "for information"),
            ("(b) sync into an empty mirror", b, b_mlflow, f"{b_queries} SQL queries"),
            ("(c) re-sync, nothing changed", c, c_mlflow, f"{c_queries} SQL queries"),
        ]
        ratio_b, ratio_c = b / a_full, c / a_full
        lines = [
            f"size: {models} models x {per_model} versions = {total} versions, {args.experiments} experiments"
            f" (populated in {populate_seconds:.0f} s with {args.threads} threads); best of {args.repeat}",
            f"calls of (a): {read.calls}",
            "",
            "| measurement | seconds | of which in MLflow calls | notes |",
            "| --- | ---: | ---: | --- |",
            *(f"| {label} | {fmt_seconds(s)} | {fmt_seconds(m)} | {note} |" for label, s, m, note in rows),
            "",
            "| ratio | value | target | met |",
            "| --- | ---: | ---: | --- |",
            f"| b/a | {ratio_b:.2f} | <= {TARGET_B} | {'yes' if ratio_b <= TARGET_B else 'NO'} |",
            f"| c/a | {ratio_c:.2f} | <= {TARGET_C} | {'yes' if ratio_c <= TARGET_C else 'NO'} |",
            f"| b/a0 (paging only) | {b / a_paging:.2f} | - | for information |",
            f"| c/a0 (paging only) | {c / a_paging:.2f} | - | for information |",
        ]
        print(f"\nResults ({datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {os.cpu_count()} cores)\n")
        print("\n".join(lines))
        print(
            f"\nall runs (s): a {_join(a_times)}; a0 {_join(a_paging_times)}; "
            f"b {_join(b_times)}; c {_join(c_times)}"
        )
        return 0
    finally:
        if args.keep:
            print(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


def _join(values: list[float]) -> str:
    return ", ".join(f"{value:.2f}" for value in values)


if __name__ == "__main__":
    sys.exit(main())
