"""Benchmark: how fast do out-of-band registry changes reach the mirror, and at what cost?

Starts its own MLflow server (SQLite store, in a temporary directory, allowed to deliver its
webhooks to loopback http), fills it with N models x 10 versions, and runs the product around it:
the inbound webhook view served by a WSGI server in this process, a real Celery worker process
(the project's `config.celery` app, `--pool threads`) on a throwaway SQLite broker, and a throwaway
SQLite mirror. Then it measures

  (a)  MLflow calls per delta poll (registry_sync.services.sync_delta), counted by a proxy in
       front of MLflow, at 10 models and at N models: an idle poll, and a poll after one legacy
       stage transition;
  (b)  the time from an alias moved by a plain MlflowClient to the mirror showing it, through
       MLflow's webhook (registered by `manage.py register_mlflow_webhook`), the view and the
       worker's refresh of that model: p50/p95 over --alias-changes;
  (c)  the time from a legacy stage transition by a plain MlflowClient to the mirror showing it,
       through the delta poll running in a loop every --interval seconds in this process (what
       beat and a worker do every SYNC_DELTA_INTERVAL_SECONDS): p50/p95 over --stage-changes,
       each made at a random moment of the interval.

Targets: calls per idle poll = 1 at both sizes; alias mirrored p95 <= 2 s; stage mirrored
p95 <= interval + 2 s.

Run from the repository root:

    .venv/bin/python bench/delta.py                  # 1000 models x 10 versions
    .venv/bin/python bench/delta.py --models 10      # 10 models only: (a) at one size
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
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (  # noqa: E402
    free_port,
    mlflow_server,
    setup_django,
    start_celery_worker,
    stop_process_group,
    wait_until,
)

SMALL = 10
VERSIONS = 10
SECRET = "bench-webhook-secret"
TARGET_ALIAS_P95 = 2.0
STAGE_SLACK = 2.0


class _ThreadingWSGIServer(WSGIServer):
    daemon_threads = True

    def process_request(self, request, client_address):  # one thread per request
        threading.Thread(target=self._handle, args=(request, client_address), daemon=True).start()

    def _handle(self, request, client_address):
        try:
            self.finish_request(request, client_address)
        finally:
            self.shutdown_request(request)


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, *args):
        pass


def populate(url: str, first: int, last: int, threads: int) -> None:
    from mlflow import MlflowClient

    def one(index: int) -> None:
        client = MlflowClient(url, url)
        name = f"bench_{index:05d}"
        client.create_registered_model(name)
        for _ in range(VERSIONS):
            client.create_model_version(name, "s3://bench/model")

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
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="bench-delta-"))
    print(f"bench/delta.py: {args.models} models x {VERSIONS} versions; workdir {workdir}", flush=True)
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
                extra_env={
                    "MLFLOW_WEBHOOK_SECRET": SECRET,
                    "SITE_URL": site_url,
                    "SYNC_DELTA_INTERVAL_SECONDS": str(int(args.interval)),
                },
            )
            from django.conf import settings
            from django.core.management import call_command
            from django.core.wsgi import get_wsgi_application
            from mlflow import MlflowClient

            from registry_sync.models import ModelVersion, RegisteredModel, SyncRun
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

            # (b) alias moved in MLflow -> mirror, through MLflow's webhook and a real worker
            web = make_server(
                "127.0.0.1", web_port, get_wsgi_application(), _ThreadingWSGIServer, _QuietHandler
            )
            threading.Thread(target=web.serve_forever, daemon=True).start()
            env = {**os.environ, "MLFLOW_TRACKING_URI": url, "PYTHONUNBUFFERED": "1"}
            worker = start_celery_worker(
                "config", log_path=workdir / "worker.log", env=env, concurrency=2, name="bench-delta"
            )
            call_command("register_mlflow_webhook")
            time.sleep(3)  # the worker's start, and MLflow's 1 s webhook cache
            alias_times: list[float] = []
            for number in range(args.alias_changes):
                name = f"bench_{random.randrange(args.models):05d}"
                current = RegisteredModel.objects.get(name=name).aliases.get("champion")
                target = random.choice([v for v in range(1, VERSIONS + 1) if v != current])
                started = time.perf_counter()
                client.set_registered_model_alias(name, "champion", str(target))
                wait_until(
                    lambda name=name, target=target: (
                        RegisteredModel.objects.get(name=name).aliases.get("champion") == target
                        and "champion" in ModelVersion.objects.get(model__name=name, version=target).aliases
                    ),
                    timeout=60,
                    interval=0.01,
                    message=f"alias change {number} on {name}",
                )
                alias_times.append(time.perf_counter() - started)
            print(f"(b) {len(alias_times)} alias changes measured", flush=True)

            # (c) legacy stage transition -> mirror, through the delta poll in a loop
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
            stage_times: list[float] = []
            stages = ["Staging", "Production", "Archived", "None"]
            for number in range(args.stage_changes):
                time.sleep(random.uniform(0, args.interval))  # a random moment of the interval
                name = f"bench_{random.randrange(args.models):05d}"
                version = 1 + random.randrange(VERSIONS)
                now = ModelVersion.objects.get(model__name=name, version=version).current_stage
                target = random.choice([s for s in stages if s != now])
                started = time.perf_counter()
                transition(client, name, version, target)
                wait_until(
                    lambda name=name, version=version, target=target: (
                        ModelVersion.objects.get(model__name=name, version=version).current_stage == target
                    ),
                    timeout=args.interval * 3 + 30,
                    interval=0.01,
                    message=f"stage change {number} on {name} v{version}",
                )
                stage_times.append(time.perf_counter() - started)
            stop.set()
            loop.join(args.interval + 30)
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
            ("(b) alias moved -> mirrored, webhook + worker", alias_times, TARGET_ALIAS_P95),
            ("(c) stage moved -> mirrored, delta poll loop", stage_times, target_stage),
        ):
            if not values:
                continue
            p50, p95 = statistics.median(values), percentile(values, 0.95)
            print(
                f"{label}: n={len(values)} p50 {p50:.2f} s, p95 {p95:.2f} s, max {max(values):.2f} s; "
                f"target p95 <= {target:.1f} s: {'met' if p95 <= target else 'NOT met'}"
            )
        return 0
    finally:
        if web is not None:
            web.shutdown()
        if worker is not None:
            stop_process_group(worker)
        if args.keep:
            print(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
