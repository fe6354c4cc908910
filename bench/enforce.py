"""Benchmark: how fast are out-of-band registry changes seen and undone, and at what cost?

Starts its own MLflow server (SQLite store, in a temporary directory, allowed to deliver its
webhooks to loopback http), fills it with N models x 10 versions (every other model's @champion
on v1), and runs the product around it as production does: the web (gunicorn, its own process,
serving MLflow's webhooks), a real Celery worker process (the project's `config.celery` app,
`--pool threads`) on a throwaway SQLite broker, and a throwaway SQLite mirror. Production and a
"Champion" stage bound to @champion are in `revert` enforcement. Then it measures

  (a)  MLflow calls per delta poll (registry_sync.services.sync_delta), counted by a proxy in
       front of MLflow, at 10 models and at N models: an idle poll, and a poll after one legacy
       stage transition;
  (b)  an alias moved (or set, where nobody held it) by a plain MlflowClient: the time until the
       mirror has recorded it (its drift event: MLflow's webhook, the view, the worker's refresh
       of that model) and until MLflow shows the alias back where it was (the worker's revert):
       p50/p95 over --alias-changes;
  (c)  a version moved into Production by a plain MlflowClient (a legacy stage transition, for
       which MLflow sends no event): the time until the mirror has recorded it, through the delta
       poll running in a loop every --interval seconds in this process (what beat and a worker do
       every SYNC_DELTA_INTERVAL_SECONDS), and until MLflow shows the version back in its stage:
       p50/p95 over --stage-changes, each made at a random moment of the interval;
  (d)  the CPU time of the web and the worker processes (all their threads and children, from
       /proc) per 1,000 changes of (b) and of (c).

Targets: calls per idle poll = 1 at both sizes; alias mirrored p95 <= 2 s, reverted p95 <= 5 s;
stage mirrored p95 <= interval + 2 s.

Run from the repository root:

    .venv/bin/python bench/enforce.py                  # 1000 models x 10 versions
    .venv/bin/python bench/enforce.py --models 10      # 10 models only: (a) at one size
    .venv/bin/python bench/enforce.py --broker redis://127.0.0.1:6379/7   # as production runs
"""

from __future__ import annotations

import argparse
import base64
import os
import random
import shutil
import statistics
import sys
import tempfile
import threading
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (  # noqa: E402
    BIN,
    answers,
    free_port,
    mlflow_server,
    setup_django,
    start_celery_worker,
    start_process,
    stop_process_group,
    wait_for_process,
    wait_until,
)

SMALL = 10
VERSIONS = 10
SECRET = "bench-webhook-secret"
TARGET_ALIAS_P95 = 2.0
TARGET_ALIAS_REVERTED_P95 = 5.0
STAGE_SLACK = 2.0


def cpu_seconds(process) -> float:
    """User + system CPU of a process group so far (its leader's pid is the group id), from /proc:
    every process of the group, threads included, plus what its reaped children used."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == process.pid:  # fields[2] is the process group (5th field of stat)
            total += sum(int(value) for value in fields[11:15])  # utime stime cutime cstime
    return total / tick


def populate(url: str, first: int, last: int, threads: int) -> None:
    from mlflow import MlflowClient

    def one(index: int) -> None:
        client = MlflowClient(url, url)
        name = f"bench_{index:05d}"
        client.create_registered_model(name)
        for _ in range(VERSIONS):
            client.create_model_version(name, "s3://bench/model")
        if index % 2 == 0:
            client.set_registered_model_alias(name, "champion", "1")

    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(one, range(first, last)))


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def poll_calls(proxy) -> tuple[int, int]:
    """(all MLflow calls, version searches) of one delta poll."""
    from registry_sync.services import sync_delta

    with proxy._lock:
        proxy.calls.clear()
    sync_delta()
    with proxy._lock:
        calls = list(proxy.calls)
    return len(calls), sum(path.endswith("/model-versions/search") for _, path in calls)


def transition(client, name: str, version: int, target: str) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        client.transition_model_version_stage(name, str(version), target)


def measure_calls(proxy, client, name: str) -> dict[str, tuple[int, int]]:
    idle = poll_calls(proxy)
    target = random.choice(["Staging", "Production"])
    transition(client, name, 1 + random.randrange(VERSIONS), target)
    changed = poll_calls(proxy)
    return {"idle": idle, "change": changed}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", type=int, default=1000)
    parser.add_argument("--alias-changes", type=int, default=50)
    parser.add_argument("--stage-changes", type=int, default=20)
    parser.add_argument("--interval", type=float, default=10.0, help="SYNC_DELTA_INTERVAL_SECONDS")
    parser.add_argument("--threads", type=int, default=8, help="client threads populating MLflow")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    parser.add_argument(
        "--broker",
        default=None,
        help="CELERY_BROKER_URL, e.g. redis://127.0.0.1:6379/7 (default: a throwaway SQLite broker, "
        "which its worker polls once a second)",
    )
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="bench-enforce-"))
    print(f"bench/enforce.py: {args.models} models x {VERSIONS} versions; workdir {workdir}", flush=True)
    # The server may deliver to this machine's loopback over http, shares one key for the
    # webhook secrets among its workers, and caches webhook lists for 1 s (60 s by default,
    # which only delays a webhook registered in the last minute).
    os.environ.update(
        {
            "MLFLOW_WEBHOOK_ALLOWED_SCHEMES": "http,https",
            "MLFLOW_WEBHOOK_ALLOW_PRIVATE_IPS": "true",
            "MLFLOW_WEBHOOK_SECRET_ENCRYPTION_KEY": base64.urlsafe_b64encode(os.urandom(32)).decode(),
            "MLFLOW_WEBHOOK_CACHE_TTL": "1",
        }
    )
    worker = web = None
    try:
        with mlflow_server(workdir / "mlflow") as url:
            small = min(SMALL, args.models)
            started = time.perf_counter()
            populate(url, 0, small, args.threads)
            print(f"populated {small} models in {time.perf_counter() - started:.1f} s", flush=True)

            from tests.mlflow_proxy import MlflowProxy

            proxy = MlflowProxy(url)
            web_port = free_port()
            site_url = f"http://127.0.0.1:{web_port}"
            setup_django(
                workdir / "django",
                mlflow_url=proxy.url,
                broker_url=args.broker,
                extra_env={
                    "MLFLOW_WEBHOOK_SECRET": SECRET,
                    "SITE_URL": site_url,
                    "SYNC_DELTA_INTERVAL_SECONDS": str(int(args.interval)),
                },
            )
            from django.conf import settings
            from django.core.management import call_command
            from mlflow import MlflowClient

            from promotions.models import AuditEvent
            from registry_sync.models import DriftEvent, SyncRun
            from registry_sync.services import sync_delta, sync_registry

            settings.DEBUG = False
            settings.ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
            client = MlflowClient(url, url)

            # (a) calls per delta poll, at 10 models and at N
            sync_registry(trigger=SyncRun.Trigger.COMMAND)
            sync_delta()
            calls = {small: measure_calls(proxy, client, "bench_00000")}
            if args.models > small:
                started = time.perf_counter()
                populate(url, small, args.models, args.threads)
                print(
                    f"populated {args.models - small} more models in {time.perf_counter() - started:.1f} s",
                    flush=True,
                )
                sync_registry(trigger=SyncRun.Trigger.COMMAND)
                sync_delta()
                sync_delta()
                calls[args.models] = measure_calls(proxy, client, f"bench_{args.models - 1:05d}")

            # The catalog: Production and a stage bound to @champion undo what they did not approve.
            from promotions.models import Stage

            Stage.objects.filter(name="Production").update(enforcement=Stage.Enforcement.REVERT)
            Stage.objects.create(
                name="Champion", position=40, mlflow_alias="champion", enforcement=Stage.Enforcement.REVERT
            )
            sync_registry(trigger=SyncRun.Trigger.COMMAND)

            # The web (MLflow's webhooks reach it) and the worker, each a process of its own.
            env = {**os.environ, "MLFLOW_TRACKING_URI": url, "PYTHONUNBUFFERED": "1"}
            web = start_process(
                [
                    str(BIN / "gunicorn"),
                    "config.wsgi",
                    "--bind",
                    f"127.0.0.1:{web_port}",
                    "--workers",
                    "1",
                    "--threads",
                    "4",
                ],
                log_path=workdir / "web.log",
                env={**env, "ALLOWED_HOSTS": "127.0.0.1,localhost"},
            )
            wait_for_process(
                web,
                lambda: answers(f"{site_url}/healthz", (200, 503)),
                what="the web",
                timeout=60,
                log_path=workdir / "web.log",
            )
            worker = start_celery_worker(
                "config", log_path=workdir / "worker.log", env=env, concurrency=2, name="bench-enforce"
            )
            call_command("register_mlflow_webhook")
            time.sleep(3)  # the worker's start, and MLflow's 1 s webhook cache

            def drift_count(name: str) -> int:
                return DriftEvent.objects.filter(model__name=name).count()

            def alias_holder(name: str) -> int | None:
                holder = client.get_registered_model(name).aliases.get("champion")
                return int(holder) if holder is not None else None

            # (b) alias moved in MLflow -> drift recorded (webhook, worker) -> moved back (worker)
            alias_seen: list[float] = []
            alias_reverted: list[float] = []
            cpu_before = (cpu_seconds(web), cpu_seconds(worker))
            for number in range(args.alias_changes):
                name = f"bench_{random.randrange(args.models):05d}"
                holder = alias_holder(name)
                target = random.choice([v for v in range(1, VERSIONS + 1) if v != holder])
                drifts = drift_count(name)
                started = time.perf_counter()
                client.set_registered_model_alias(name, "champion", str(target))
                wait_until(
                    lambda name=name, drifts=drifts: drift_count(name) > drifts,
                    timeout=60,
                    interval=0.01,
                    message=f"alias change {number} on {name} to be recorded",
                )
                alias_seen.append(time.perf_counter() - started)
                wait_until(
                    lambda name=name, holder=holder: alias_holder(name) == holder,
                    timeout=60,
                    interval=0.05,
                    message=f"alias change {number} on {name} to be reverted",
                )
                alias_reverted.append(time.perf_counter() - started)
            time.sleep(2)  # the webhooks of the reverts themselves, and their refreshes
            cpu_alias = (cpu_seconds(web) - cpu_before[0], cpu_seconds(worker) - cpu_before[1])
            print(f"(b) {len(alias_seen)} alias changes measured", flush=True)

            # (c) a version moved into Production -> drift recorded (delta poll) -> moved back
            stop = threading.Event()

            def poll_loop() -> None:
                while not stop.is_set():
                    begun = time.monotonic()
                    try:
                        sync_delta()
                    except Exception as exc:  # noqa: BLE001 - the loop goes on, as beat does
                        print(f"delta poll failed: {exc}", flush=True)
                    stop.wait(max(0.0, args.interval - (time.monotonic() - begun)))

            loop = threading.Thread(target=poll_loop, daemon=True)
            loop.start()
            stage_seen: list[float] = []
            stage_reverted: list[float] = []
            cpu_before = (cpu_seconds(web), cpu_seconds(worker))
            for number in range(args.stage_changes):
                time.sleep(random.uniform(0, args.interval))  # a random moment of the interval
                name = f"bench_{random.randrange(args.models):05d}"
                version = 1 + random.randrange(VERSIONS)
                was = client.get_model_version(name, str(version)).current_stage
                if was == "Production":
                    continue
                drifts = drift_count(name)
                started = time.perf_counter()
                transition(client, name, version, "Production")
                wait_until(
                    lambda name=name, drifts=drifts: drift_count(name) > drifts,
                    timeout=args.interval * 3 + 30,
                    interval=0.01,
                    message=f"stage change {number} on {name} v{version} to be recorded",
                )
                stage_seen.append(time.perf_counter() - started)
                wait_until(
                    lambda name=name, version=version, was=was: (
                        client.get_model_version(name, str(version)).current_stage == was
                    ),
                    timeout=60,
                    interval=0.05,
                    message=f"stage change {number} on {name} v{version} to be reverted",
                )
                stage_reverted.append(time.perf_counter() - started)
            stop.set()
            loop.join(args.interval + 30)
            cpu_stage = (cpu_seconds(web) - cpu_before[0], cpu_seconds(worker) - cpu_before[1])
            reverted = AuditEvent.objects.filter(action="registry.reverted").count()
            failed = AuditEvent.objects.filter(action="registry.revert_failed").count()
            proxy.close()

        print()
        print("(a) MLflow calls per delta poll (all calls / version searches)")
        for size, figures in calls.items():
            print(
                f"    {size:>6} models x {VERSIONS}: idle {figures['idle'][0]} / {figures['idle'][1]}; "
                f"after one stage change {figures['change'][0]} / {figures['change'][1]}"
            )
        idle_ok = all(figures["idle"] == (1, 1) for figures in calls.values())
        search_ok = all(figures["change"][1] == 1 for figures in calls.values())
        print(f"    target: 1 call per idle poll at both sizes: {'met' if idle_ok else 'NOT met'}")
        print(f"    one version search per poll with a change: {'yes' if search_ok else 'NO'}")
        target_stage = args.interval + STAGE_SLACK
        for label, values, target in (
            ("(b) alias moved -> recorded (webhook + worker)", alias_seen, TARGET_ALIAS_P95),
            ("(b) alias moved -> reverted in MLflow", alias_reverted, TARGET_ALIAS_REVERTED_P95),
            ("(c) stage moved -> recorded (delta poll loop)", stage_seen, target_stage),
            ("(c) stage moved -> reverted in MLflow", stage_reverted, None),
        ):
            if not values:
                continue
            p50, p95 = statistics.median(values), percentile(values, 0.95)
            verdict = (
                f"target p95 <= {target:.1f} s: {'met' if p95 <= target else 'NOT met'}" if target else ""
            )
            figures = f"n={len(values)} p50 {p50:.2f} s, p95 {p95:.2f} s, max {max(values):.2f} s"
            print(f"{label}: {figures}; {verdict}")
        print(f"    registry.reverted entries: {reverted}; registry.revert_failed: {failed}")
        for label, (web_cpu, worker_cpu), count in (
            ("(b) alias changes", cpu_alias, len(alias_seen)),
            ("(c) stage changes", cpu_stage, len(stage_seen)),
        ):
            if count:
                print(
                    f"(d) CPU per 1,000 {label}: web {web_cpu / count * 1000:.1f} s, "
                    f"worker {worker_cpu / count * 1000:.1f} s ({count} changes: web {web_cpu:.2f} s, "
                    f"worker {worker_cpu:.2f} s)"
                )
        return 0
    finally:
        if web is not None:
            stop_process_group(web)
        if worker is not None:
            stop_process_group(worker)
        if args.keep:
            print(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
