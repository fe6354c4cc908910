"""Benchmark: server time of the busiest pages with a large database.

Fills a throwaway SQLite database with 10,000 promotion requests (with reviews, each with a
recorded manifest of --manifest-files files, default 200) over 2,000 models and 100,000 audit
events, then renders through Django's test client, in process, so
the figure is server time without the network:

  * the queue (`/`, "All open" and "Waiting for you"),
  * a request page (`/requests/<id>/`),
  * the models list (`/models/`) and a model page,

each --repeat times after a warm-up, and prints p50/p95 in milliseconds (target p95 <= 150 ms).
For scale it also times the bare MLflow client answering what MLflow's own model page asks
(`search_model_versions` for one model) against a local MLflow server, and prints the ratio.

The request page's live poll (`/requests/<id>/status/?seen=<token>`, what every open request
page asks every 3 s) is timed the same way while nothing changed (answered 204), with the
queries each poll makes (target: p95 <= 10 ms, 1 query).

Then the same database is served by gunicorn as the Procfile runs it (`--workers 2`, DEBUG off)
and --clients concurrent clients (default 20), each signed in as a reviewer, fetch the queue
page for --seconds, then a minimal Django view (same middleware, a constant body) on the same
gunicorn: requests per second of each and their ratio (target >= 0.5); and, for what sign-in
itself costs, the minimal view behind `login_required`; and, for the ceiling of any queue page
drawn without a cache, the queue's own template rendered from rows read once per process (no
SQL but the frame's). The clients run in this process, on the same two cores as the server,
for every figure alike.

    .venv/bin/python bench/pages.py                 # 10,000 requests, 100,000 audit events
    .venv/bin/python bench/pages.py --requests 2000 --events 20000 --repeat 30
    .venv/bin/python bench/pages.py --clients 20 --seconds 15
"""

from __future__ import annotations

import argparse
import http.client
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (  # noqa: E402
    BIN,
    free_port,
    mlflow_server,
    setup_django,
    start_process,
    stop_process_group,
    wait_for_http,
)

# Both the in-process client and gunicorn read sessions signed with this key.
BENCH_SECRET_KEY = "bench-pages-" + "k" * 40
MINIMAL_PATH = "/bench/minimal/"
SIGNED_IN_PATH = "/bench/minimal-signed-in/"
TEMPLATE_ONLY_PATH = "/bench/queue-template-only/"


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))]


def fill(requests: int, events: int, manifest_files: int = 0) -> dict:
    from datetime import timedelta

    from django.contrib.auth.models import Group, User
    from django.utils import timezone

    from promotions import audit
    from promotions.models import AuditChainHead, AuditEvent, PromotionRequest, Review, Stage
    from registry_sync.models import ModelVersion, RegisteredModel

    riley = User.objects.create_user("riley", first_name="Riley")
    rex = User.objects.create_user("rex", first_name="Rex")
    rita = User.objects.create_user("rita", first_name="Rita")
    riley.groups.add(Group.objects.get(name="Requesters"))
    for reviewer in (rex, rita):
        reviewer.groups.add(Group.objects.get(name="Reviewers"))
    production, staging = Stage.objects.get(name="Production"), Stage.objects.get(name="Staging")

    model_count = max(1, requests // 5)
    models = RegisteredModel.objects.bulk_create(
        [RegisteredModel(name=f"model_{i:05d}", aliases={"champion": 1}) for i in range(model_count)]
    )
    versions = ModelVersion.objects.bulk_create(
        [
            ModelVersion(
                model=m,
                version=n,
                current_stage={1: "Production", 2: "Staging"}.get(n, "None"),
                status="READY",
                metrics={"accuracy": 0.9 + n / 100, "rmse": 12.0 - n / 10},
                params={"depth": str(5 + n)},
            )
            for m in models
            for n in range(1, 6)
        ],
        batch_size=2000,
    )
    now = timezone.now()
    statuses = ["pending", "approved", "applied", "rejected", "cancelled"]
    # What the worker records after filing: every file of the model with its size and digest.
    files = [[f"model/part-{n:05d}.bin", 1_048_576, f"{n:064x}"] for n in range(manifest_files)]
    manifest = {"files": files, "sha256": "f" * 64, "bytes": 1_048_576 * manifest_files} if files else {}
    rows = []
    for i in range(requests):
        version = versions[i % len(versions)]
        stage = production if version.current_stage == "Staging" else staging
        status = statuses[i % len(statuses)]
        # one open request per (version, stage): open ones only on the first pass over versions
        if i >= len(versions) and status in ("pending", "approved"):
            status = "applied"
        rows.append(
            PromotionRequest(
                version=version,
                stage=stage,
                requested_by=riley,
                requested_by_name="Riley",
                justification="Retrained on fresh data. " * 5,
                status=status,
                source_stage=version.current_stage,
                evidence={
                    "metrics": version.metrics,
                    "params": version.params,
                    "tags": {"validation": "passed"},
                    "current_holder": {"version": 1, "metrics": {"accuracy": 0.91}, "params": {"depth": "6"}},
                },
                evidence_sha256="0" * 64,
                check_results=[
                    {"rule": "metric accuracy >= 0.9", "passed": True, "actual": "0.93", "message": ""}
                ],
                created_at=now - timedelta(minutes=i),
                updated_at=now - timedelta(minutes=i),
                expires_at=now + timedelta(days=7),
                manifest_state="ready" if manifest_files else "",
                manifest=manifest,
            )
        )
    created = PromotionRequest.objects.bulk_create(rows, batch_size=2000)
    Review.objects.bulk_create(
        [
            Review(
                request=r,
                reviewer=rex,
                reviewer_name="Rex",
                decision="approve",
                comment="ok",
                evidence_sha256="0" * 64,
                created_at=now,
            )
            for r in created[::2]
        ],
        batch_size=2000,
    )
    # A valid chain, written in bulk (the per-entry service would take minutes).
    head = AuditChainHead.objects.get(pk=1)
    sequence, previous = head.last_sequence, head.last_hash
    batch = []
    for i in range(events):
        request = created[i % len(created)]
        sequence += 1
        event = AuditEvent(
            sequence=sequence,
            created_at=now - timedelta(seconds=events - i),
            actor_username="rex",
            actor_name="Rex",
            action="review.approved",
            model_name=request.version.model.name,
            version=request.version.version,
            from_stage="Staging",
            to_stage="Production",
            request_id=request.pk,
            meaning=f"Approved: promote {request.version.model.name} v{request.version.version} "
            "to Production",
            details={"comment": "ok"},
            prev_hash=previous,
        )
        event.hash = audit.compute_hash(audit.payload_of(event))
        previous = event.hash
        batch.append(event)
        if len(batch) == 5000:
            AuditEvent.objects.bulk_create(batch)
            batch = []
    AuditEvent.objects.bulk_create(batch)
    AuditChainHead.objects.filter(pk=1).update(last_sequence=sequence, last_hash=previous)
    pending = next(r for r in created if r.status == "pending")
    return {"reviewer": rita, "request": pending, "model": models[0].name}


def time_page(client, url: str, repeat: int) -> list[float]:
    client.get(url)  # warm-up: template compilation, connection
    samples = []
    for _ in range(repeat):
        started = time.perf_counter()
        response = client.get(url)
        samples.append((time.perf_counter() - started) * 1000)
        assert response.status_code == 200, (url, response.status_code)
    return samples


def time_poll(client, request_id: int, viewer_id: int, repeat: int) -> tuple[list[float], int]:
    """The live poll while nothing changed, with the key the page hands it: milliseconds per
    poll, and queries per poll."""
    from urllib.parse import urlencode

    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from promotions import polling, selectors

    query = urlencode(
        {
            "seen": selectors.request_seen(request_id),
            "key": polling.poll_key(user_id=viewer_id, request_id=request_id),
        }
    )
    url = f"/requests/{request_id}/status/?{query}"
    client.get(url, HTTP_HX_REQUEST="true")  # warm-up
    with CaptureQueriesContext(connection) as queries:
        response = client.get(url, HTTP_HX_REQUEST="true")
    assert response.status_code == 204, response.status_code
    # Read now: the next request's start empties the connection's query log.
    query_count = len(queries)
    samples = []
    for _ in range(repeat):
        started = time.perf_counter()
        response = client.get(url, HTTP_HX_REQUEST="true")
        samples.append((time.perf_counter() - started) * 1000)
        assert response.status_code == 204, response.status_code
    return samples, query_count


def serve(database: Path, mlflow_url: str, workdir: Path):
    """gunicorn as the Procfile starts it, on the bench database, with the minimal view added."""
    port = free_port()
    log_path = workdir / "gunicorn.log"
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "bench.pages_settings",
        "DEBUG": "false",
        "SECRET_KEY": BENCH_SECRET_KEY,
        "ALLOWED_HOSTS": "127.0.0.1",
        "SECURE_SSL_REDIRECT": "false",
        "DATABASE_URL": f"sqlite:///{database}",
        "MLFLOW_TRACKING_URI": mlflow_url,
    }
    process = start_process(
        [str(BIN / "gunicorn"), "config.wsgi", "--bind", f"127.0.0.1:{port}", "--workers", "2"],
        log_path=log_path,
        env=env,
        cwd=Path(__file__).resolve().parent.parent,
    )
    wait_for_http(f"http://127.0.0.1:{port}{MINIMAL_PATH}", process, log_path=log_path)
    return process, port


def throughput(port: int, path: str, cookie: str, clients: int, seconds: float) -> float:
    """Requests per second answered 200 to `clients` threads asking `path` for `seconds`."""
    done = [0] * clients
    failures: list[str] = []
    deadline = time.monotonic() + seconds

    def client(index: int) -> None:
        while time.monotonic() < deadline:
            # gunicorn's sync workers close each connection: a new one per request, as a browser's.
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            try:
                connection.request("GET", path, headers={"Cookie": cookie})
                response = connection.getresponse()
                response.read()
                if response.status != 200:
                    failures.append(f"{path}: {response.status}")
                    return
                done[index] += 1
            finally:
                connection.close()

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.monotonic() - started
    if failures:
        raise SystemExit(f"the load failed: {failures[0]}")
    return sum(done) / elapsed


def bare_mlflow(url: str, repeat: int) -> list[float]:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=url, registry_uri=url)
    client.create_registered_model("bench_model")
    for _ in range(5):
        client.create_model_version("bench_model", "s3://bench/model")
    client.search_model_versions("name = 'bench_model'")
    samples = []
    for _ in range(repeat):
        started = time.perf_counter()
        client.search_model_versions("name = 'bench_model'")
        samples.append((time.perf_counter() - started) * 1000)
    return samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=10_000)
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument(
        "--manifest-files", type=int, default=200, help="files in each request's recorded manifest"
    )
    parser.add_argument("--repeat", type=int, default=50)
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=15.0)
    args = parser.parse_args()

    with (
        tempfile.TemporaryDirectory(prefix="bench-pages-") as tmp,
        mlflow_server(Path(tmp) / "mlflow") as url,
    ):
        setup_django(Path(tmp) / "django", mlflow_url=url, extra_env={"SECRET_KEY": BENCH_SECRET_KEY})
        from django.conf import settings
        from django.test import Client

        settings.ALLOWED_HOSTS = ["testserver"]
        # Measure as production runs: no template debugging, no query log.
        settings.DEBUG = False
        started = time.perf_counter()
        world = fill(args.requests, args.events, args.manifest_files)
        print(
            f"filled {args.requests} requests and {args.events} audit events "
            f"in {time.perf_counter() - started:.1f} s"
        )

        client = Client()
        client.force_login(world["reviewer"])
        pages = {
            "queue (waiting for you)": "/",
            "queue (all open)": "/?tab=open",
            "request page": f"/requests/{world['request'].pk}/",
            "models list": "/models/",
            "model page": f"/models/{world['model']}/",
        }
        results = {name: time_page(client, url_, args.repeat) for name, url_ in pages.items()}
        poll, poll_queries = time_poll(client, world["request"].pk, world["reviewer"].pk, args.repeat)
        bare = bare_mlflow(url, args.repeat)

        cookie = f"sessionid={client.cookies['sessionid'].value}"
        server, port = serve(Path(tmp) / "django" / "bench.sqlite3", url, Path(tmp))
        try:
            throughput(port, "/", cookie, args.clients, 2)  # warm-up: both workers, templates
            queue_rps = throughput(port, "/", cookie, args.clients, args.seconds)
            minimal_rps = throughput(port, MINIMAL_PATH, cookie, args.clients, args.seconds)
            signed_in_rps = throughput(port, SIGNED_IN_PATH, cookie, args.clients, args.seconds)
            throughput(port, TEMPLATE_ONLY_PATH, cookie, args.clients, 2)  # each worker reads its rows
            template_rps = throughput(port, TEMPLATE_ONLY_PATH, cookie, args.clients, args.seconds)
        finally:
            stop_process_group(server)

    bare_p50 = statistics.median(bare)
    print(f"\nserver time over {args.repeat} requests each (ms); target p95 <= 150 ms")
    print(f"{'page':<26}{'p50':>8}{'p95':>8}  {'p50 / bare MLflow':>18}  met")
    for name, samples in results.items():
        p50, p95 = statistics.median(samples), percentile(samples, 0.95)
        print(f"{name:<26}{p50:>8.1f}{p95:>8.1f}  {p50 / bare_p50:>18.2f}  {'yes' if p95 <= 150 else 'NO'}")
    print(f"{'bare MLflow client*':<26}{bare_p50:>8.1f}{percentile(bare, 0.95):>8.1f}")
    print(
        "* search_model_versions for one model against a local MLflow server, "
        "what MLflow's own model page asks"
    )
    poll_p95 = percentile(poll, 0.95)
    print(
        f"\nlive poll, nothing changed (204), over {args.repeat} polls: "
        f"p50 {statistics.median(poll):.2f} ms, "
        f"p95 {poll_p95:.2f} ms (target <= 10 ms: {'yes' if poll_p95 <= 10 else 'NO'}); "
        f"{poll_queries} queries per poll (target 1: {'yes' if poll_queries <= 1 else 'NO'})"
    )
    ratio = queue_rps / minimal_rps
    print(
        f"\ngunicorn --workers 2, {args.clients} concurrent clients, {args.seconds:.0f} s each:"
        f"\n  queue page          {queue_rps:8.1f} requests/s"
        f"\n  minimal Django view {minimal_rps:8.1f} requests/s"
        f"\n  ratio {ratio:.2f} (target >= 0.5: {'yes' if ratio >= 0.5 else 'NO'})"
        f"\n  minimal view behind sign-in (session and user read) {signed_in_rps:8.1f} requests/s,"
        f" queue / that {queue_rps / signed_in_rps:.2f}"
        f"\n  the queue's template alone, rows read once {template_rps:8.1f} requests/s,"
        f" / minimal view {template_rps / minimal_rps:.2f}: the most an uncached queue could reach"
    )


if __name__ == "__main__":
    main()
