"""Benchmark: does the apply path scale out with worker processes, on PostgreSQL with Redis and
with RabbitMQ, as well as the bare MLflow client does with the same number of threads?

One MLflow server (SQLite store, `--workers 4`, as bench/apply.py starts it) is shared by every
phase; every set of models it needs (M models x S stages, S+1 versions each, for each broker and
worker count, for ours and for the bare client) is populated up front, with many threads, before
any clock starts. Then, for each broker, a child process of this script gets a fresh PostgreSQL
database (created and dropped here) and its own queues on the broker, and for each worker count W:

  ours:  M x S requests filed and approved through the product's services (two reviewers), then
         enqueued at once to W real `celery worker --pool threads --concurrency C` processes of the
         project's app, each consuming the apply, sync and notify queues (apply first), as
         docs/operations.md deploys them; timed until the last `applied_at`;
  bare:  the same MLflow writes (bench.apply.bare_apply) from a ThreadPoolExecutor(W x C) on an
         identical set of models.

After every phase it checks (PASS/FAIL; any FAIL makes the exit status 1): every request
applied; one `promotion.applied` audit event per request; every version's stage and aliases in
MLflow as expected, with the request's id in its `promotion.request_id` tag; exactly one
stage-transition (or alias) call per promotion in the MLflow server's access log (none doubled);
and, at the end, `manage.py verify_audit_log`.

Also: seconds per promotion at several sizes with the same W (--linearity, flat means linear);
the bare client's throughput at W x C threads (8, 16, 32), where it stops growing MLflow itself
is the limit; and with --probe, a bulk of requests filed with
promotion_requests_create_passing to an automatic stage with a webhook endpoint (a receiver in
this process answering 200) and e-mail (an SMTP sink on loopback) on, during which single
unrelated requests are approved one a second: their approval -> applied p50/p95, and the bulk's
completion against the bare client's time for the same writes.

Run from the repository root:

    .venv/bin/python bench/scale.py --quick                  # a smoke size, both brokers
    .venv/bin/python bench/scale.py --probe                  # the full default (~25 min per broker)
    .venv/bin/python bench/scale.py --models 200 --brokers redis --workers 1,2

Nothing is asserted on timings; the load average is printed with each phase.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socketserver
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.apply import (  # noqa: E402
    STAGE_SPECS,
    Context,
    Item,
    Phase,
    ServerLog,
    approve_request,
    delete_queues,
    enqueue_all,
    ensure_catalog,
    file_requests,
    items_for,
    load,
    log,
    new_client,
    percentile,
    populate,
    purge_queues,
    run_bare,
    sync_mirror,
    wait_applied,
)
from bench.common import (  # noqa: E402
    QuietHandler,
    mlflow_server,
    serve_in_thread,
    setup_django,
    start_celery_worker,
    stop_process_group,
    stop_serving,
    wait_until,
)
from promotions import provenance  # noqa: E402 - no Django needed: keys and values only

TARGET_RATIO = 0.9
TARGET_PROBE_P95 = 5.0
TARGET_PROBE_BULK = 1.2
BROKERS = {
    "redis": "redis://127.0.0.1:6379/13",
    "rabbitmq": "amqp://guest:guest@127.0.0.1:5672//",
}
POSTGRES = "postgresql://postgres@127.0.0.1:5432"
TRANSITION = "POST model-versions/transition-stage"
ALIAS = "POST registered-models/alias"
AUTO_STAGE = "Bench Auto Staging"  # required_approvals 0: the bulk applies as it is filed


@dataclass(frozen=True)
class Plan:
    """Every set of models one broker's child needs: (label, models, stages)."""

    sets: list[tuple[str, int, int]]

    @staticmethod
    def of(args: argparse.Namespace) -> Plan:
        sets = []
        for workers in args.workers:
            sets += [
                (f"ours-w{workers}", args.models, args.stages),
                (f"bare-w{workers}", args.models, args.stages),
            ]
        for promotions in args.linearity:
            if not reuses_main(args, promotions):
                sets.append((f"lin-{promotions}", promotions // args.stages, args.stages))
        if args.probe:
            sets += [
                ("probe-bulk", args.probe_size, 1),
                ("probe-bare", args.probe_size, 1),
                ("probe-single", args.probe_singles, 1),
            ]
        return Plan(sets)


def reuses_main(args: argparse.Namespace, promotions: int) -> bool:
    return promotions == args.models * args.stages and args.linearity_workers in args.workers


def names_of(run_id: str, broker: str, label: str, models: int) -> list[str]:
    return [f"bs-{run_id}-{broker}-{label}-{i:04d}" for i in range(models)]


# --- queues of our own, routed as the product routes them ---------------------------------------


def queue_names(prefix: str) -> dict[str, str]:
    from django.conf import settings

    return {name: f"{prefix}-{name}" for name in settings.TASK_QUEUE_NAMES}


def own_queues(app: Any, prefix: str) -> None:
    """The product's apply/sync/notify routing, onto queues of this run's own: another worker on
    the same broker takes none of our tasks, and ours none of theirs."""
    from django.conf import settings
    from kombu import Exchange, Queue

    names = queue_names(prefix)
    app.conf.task_queues = [Queue(n, Exchange(n, type="direct"), routing_key=n) for n in names.values()]
    app.conf.task_routes = {
        task: {"queue": names[route["queue"]]} for task, route in settings.CELERY_TASK_ROUTES.items()
    }
    app.conf.task_default_queue = names[settings.CELERY_TASK_DEFAULT_QUEUE]


def __getattr__(name: str) -> Any:
    """`celery -A bench.scale:worker_app worker`: the project's app on this run's queues."""
    if name == "worker_app":
        from config.celery import app

        own_queues(app, os.environ["BENCH_SCALE_QUEUES"])
        return app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@contextmanager
def running_workers(ctx: Context, count: int, concurrency: int) -> Iterator[list[Path]]:
    """`count` worker processes consuming our apply, sync and notify queues in that order, each
    answering a ping before this yields their log files."""
    from config.celery import app

    ctx.workers += 1
    names = list(queue_names(ctx.queue).values())
    prefix = f"bs-{ctx.run_id}-p{ctx.workers}"
    processes, logs = [], []
    try:
        for index in range(count):
            logs.append(ctx.tmp / f"worker-p{ctx.workers}-{index}.log")
            processes.append(
                start_celery_worker(
                    "bench.scale:worker_app",
                    log_path=logs[-1],
                    env={**os.environ, "BENCH_SCALE_QUEUES": ctx.queue},
                    concurrency=concurrency,
                    name=f"{prefix}-{index}",
                    options=("--queues", ",".join(names)),
                )
            )

        def all_answer() -> bool:
            for process, path in zip(processes, logs, strict=True):
                if process.poll() is not None:
                    raise RuntimeError(f"a worker exited: {path.read_text(errors='replace')[-3000:]}")
            replies = app.control.ping(timeout=1.0)
            return sum(1 for reply in replies for host in reply if host.startswith(prefix)) == count

        wait_until(all_answer, timeout=120, interval=0.5, message=f"{count} workers")
        yield logs
    finally:
        for process in processes:
            stop_process_group(process)


# --- checks ----------------------------------------------------------------------------------------


@dataclass
class Checks:
    failures: list[str] = field(default_factory=list)
    lines: list[str] = field(default_factory=list)

    def record(self, what: str, problems: list[str]) -> None:
        self.lines.append(
            f"{'PASS' if not problems else 'FAIL'} {what}" + "".join(f"\n    {p}" for p in problems[:5])
        )
        if problems:
            self.failures.append(what)

    def summary(self) -> str:
        return "PASS" if not self.failures else "FAIL"


def expected_state(stages: list[int]) -> tuple[dict[int, str], dict[str, int]]:
    """Stage by version and aliases after promoting version k+2 to bench stage k, for each k in
    `stages` (indexes into STAGE_SPECS), from version 1 holding them (bench.apply.populate)."""
    count = max(stages) + 1
    holder = "Production" if count >= 2 else "Staging"
    state = {number: "None" for number in range(1, count + 2)}
    state[1] = holder
    aliases = {"champion": 1} if count >= 3 else {}
    for k in stages:
        spec, number = STAGE_SPECS[k], k + 2
        if spec.mlflow_stage:
            if spec.archive_existing:
                state.update({v: "Archived" for v, s in state.items() if s == spec.mlflow_stage})
            state[number] = spec.mlflow_stage
        if spec.mlflow_alias:
            aliases[spec.mlflow_alias] = number
    return state, aliases


def registry_problems(
    url: str, names: list[str], stages: int, request_ids: dict[tuple[str, int], int]
) -> list[str]:
    """Compare every version of `names` with the expected state; with request_ids ((model,
    version) -> request pk), also each promoted version's promotion.request_id tag."""
    client = new_client(url)
    want_stages, want_aliases = expected_state(list(range(stages)))
    problems = []
    wanted = set(names)
    seen: dict[str, dict[int, Any]] = {}
    prefix = os.path.commonprefix(names)
    token = None
    while True:
        page = client.search_model_versions(f"name LIKE '{prefix}%'", max_results=1000, page_token=token)
        for v in page:
            if v.name in wanted:
                seen.setdefault(v.name, {})[int(v.version)] = v
        token = page.token
        if not token:
            break
    for name in names:
        versions = seen.get(name, {})
        got = {number: v.current_stage for number, v in sorted(versions.items())}
        if got != want_stages:
            problems.append(f"{name}: stages {got}, expected {want_stages}")
        for (model, number), request_id in request_ids.items():
            if model == name:
                tag = (
                    (versions.get(number).tags or {}).get(provenance.REQUEST_ID)
                    if number in versions
                    else None
                )
                if tag != str(request_id):
                    problems.append(
                        f"{name} v{number}: {provenance.REQUEST_ID}={tag!r}, expected {request_id}"
                    )
    if want_aliases:
        for name in names:
            aliases = dict(client.get_registered_model(name).aliases or {})
            if {k: int(v) for k, v in aliases.items()} != want_aliases:
                problems.append(f"{name}: aliases {aliases}, expected {want_aliases}")
    return problems


def write_problems(items: list[Item], calls: Counter[str]) -> list[str]:
    """Exactly one stage transition (and one alias move) per promotion that needs one."""
    problems = []
    transitions = sum(1 for item in items if item.spec.mlflow_stage)
    aliases = sum(1 for item in items if item.spec.mlflow_alias)
    if calls[TRANSITION] != transitions:
        problems.append(f"{calls[TRANSITION]} stage transitions for {transitions} promotions")
    if calls[ALIAS] != aliases:
        problems.append(f"{calls[ALIAS]} alias moves for {aliases} promotions")
    return problems


def check_ours(
    ctx: Context,
    checks: Checks,
    what: str,
    ids: list[int],
    names: list[str],
    stages: int,
    calls: Counter[str] | None,
) -> None:
    from django.db.models import Count

    from promotions.models import AuditEvent, PromotionRequest

    rows = list(
        PromotionRequest.objects.filter(pk__in=ids).values_list(
            "pk", "status", "version__model__name", "version__version"
        )
    )
    not_applied = [
        f"#{pk} is {status}" for pk, status, _, _ in rows if status != PromotionRequest.Status.APPLIED
    ]
    if len(rows) != len(ids):
        not_applied.append(f"{len(ids) - len(rows)} requests missing")
    checks.record(f"{what}: all {len(ids)} requests applied", not_applied)
    events = dict(
        AuditEvent.objects.filter(action="promotion.applied", request_id__in=ids)
        .values("request_id")
        .annotate(n=Count("pk"))
        .values_list("request_id", "n")
    )
    checks.record(
        f"{what}: one promotion.applied audit event per request",
        [f"#{pk}: {events.get(pk, 0)} events" for pk in ids if events.get(pk, 0) != 1],
    )
    request_ids = {(name, number): pk for pk, _, name, number in rows}
    checks.record(
        f"{what}: MLflow state and provenance of every version",
        registry_problems(ctx.url, names, stages, request_ids),
    )
    if calls is not None:
        checks.record(
            f"{what}: no MLflow write lost or doubled (server access log)",
            write_problems(items_for(names, stages), calls),
        )


def check_bare(
    ctx: Context, checks: Checks, what: str, names: list[str], stages: int, calls: Counter[str]
) -> None:
    checks.record(f"{what}: MLflow state of every version", registry_problems(ctx.url, names, stages, {}))
    checks.record(
        f"{what}: one write per promotion (server access log)",
        write_problems(items_for(names, stages), calls),
    )


# --- phases ----------------------------------------------------------------------------------------


@dataclass
class Ours:
    phase: Phase
    p50: float
    p95: float


def run_ours(ctx: Context, ids: list[int], *, workers: int, concurrency: int, server: ServerLog) -> Ours:
    """Enqueue every approved request at once to `workers` processes; until the last applied_at."""
    from django.db.models import Max
    from django.utils import timezone

    from promotions.models import PromotionRequest

    # The approvals enqueued their applies and e-mails on commit; the clock starts with ours.
    purge_queues(list(queue_names(ctx.queue).values()))
    with running_workers(ctx, workers, concurrency) as logs:
        mark = server.mark()
        started_wall = timezone.now()
        enqueued = enqueue_all(ids)
        wait_applied(ids, logs[0], timeout=120 + 5 * len(ids))
        calls = server.calls_since(mark)
    rows = PromotionRequest.objects.filter(pk__in=ids)
    last = rows.aggregate(last=Max("applied_at"))["last"]
    seconds = (last - started_wall).total_seconds()
    # decided_at was before the clock: from the enqueue, what a request waits once it is out.
    waits = [
        max(0.0, (applied - started_wall).total_seconds())
        for applied in rows.values_list("applied_at", flat=True)
    ]
    notes = f"enqueueing took {enqueued:.2f} s; {load()}"
    label = f"ours W={workers} c={concurrency}"
    return Ours(
        Phase(label, len(ids), seconds, calls, notes), percentile(waits, 0.5), percentile(waits, 0.95)
    )


def run_bare_patient(ctx: Context, items: list[Item], *, threads: int, server: ServerLog) -> Phase:
    """bench.apply.run_bare with MLflow's own 120 s call timeout, as a script would run it, not the
    product's 10 s (MLFLOW_TIMEOUT_SECONDS, set in this process by the gateway): the bare client
    does not retry, and at 32 threads on a loaded machine one call took longer than 10 s."""
    saved = os.environ.get("MLFLOW_HTTP_REQUEST_TIMEOUT")
    os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] = "120"
    try:
        return run_bare(ctx, items, threads=threads, label=f"bare {threads} threads", server=server)
    finally:
        if saved is None:
            os.environ.pop("MLFLOW_HTTP_REQUEST_TIMEOUT", None)
        else:
            os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] = saved


@dataclass
class WorkerRow:
    workers: int
    ours: Ours
    bare: Phase
    checks: str


def file_approved(ctx: Context, names: list[str], stages: int, threads: int) -> tuple[list[int], float]:
    """File and approve through the services from `threads` threads, as many reviewers would (one
    at a time costs 0.6-0.7 s a request at load 10). More than one thread met PostgreSQL deadlocks
    between the approval's request lock and the audit chain head's (docs/benchmarks.md). The ids
    come back in bench.apply's stage-major order, the order they are enqueued in."""
    from django.db import connection

    items = items_for(names, stages)
    chunks = [list(range(len(items)))[start::threads] for start in range(threads)]

    def one(indexes: list[int]) -> list[tuple[int, int]]:
        try:
            filed = file_requests(ctx, [items[i] for i in indexes], approve=True) if indexes else []
            return list(zip(indexes, filed, strict=True))
        finally:
            connection.close()  # this thread's own connection

    started = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        by_index = dict(pair for part in pool.map(one, chunks) for pair in part)
    return [by_index[i] for i in range(len(items))], time.perf_counter() - started


def run_workers_row(
    ctx: Context, args: argparse.Namespace, workers: int, server: ServerLog, checks: Checks
) -> WorkerRow:
    ours_names = names_of(ctx.run_id, args.broker_label, f"ours-w{workers}", args.models)
    bare_names = names_of(ctx.run_id, args.broker_label, f"bare-w{workers}", args.models)
    ids, file_s = file_approved(ctx, ours_names, args.stages, args.filing_threads)
    log(f"W={workers}: {len(ids)} requests filed and approved in {file_s:.1f} s")
    ours = run_ours(ctx, ids, workers=workers, concurrency=args.concurrency, server=server)
    log(f"  ours {ours.phase.seconds:.2f} s ({ours.phase.notes})")
    failed_before = len(checks.failures)
    check_ours(ctx, checks, f"W={workers} ours", ids, ours_names, args.stages, ours.phase.calls)
    threads = workers * args.concurrency
    bare = run_bare_patient(ctx, items_for(bare_names, args.stages), threads=threads, server=server)
    log(f"  bare {bare.seconds:.2f} s ({bare.notes})")
    check_bare(ctx, checks, f"W={workers} bare", bare_names, args.stages, bare.calls)
    return WorkerRow(workers, ours, bare, "PASS" if len(checks.failures) == failed_before else "FAIL")


@dataclass
class LinearityPoint:
    promotions: int
    seconds: float


def run_linearity(
    ctx: Context, args: argparse.Namespace, rows: list[WorkerRow], server: ServerLog, checks: Checks
) -> list[LinearityPoint]:
    points = []
    for promotions in args.linearity:
        if reuses_main(args, promotions):
            row = next(r for r in rows if r.workers == args.linearity_workers)
            points.append(LinearityPoint(promotions, row.ours.phase.seconds))
            continue
        names = names_of(ctx.run_id, args.broker_label, f"lin-{promotions}", promotions // args.stages)
        ids, _ = file_approved(ctx, names, args.stages, args.filing_threads)
        ours = run_ours(ctx, ids, workers=args.linearity_workers, concurrency=args.concurrency, server=server)
        log(f"linearity {len(ids)}: {ours.phase.seconds:.2f} s")
        check_ours(ctx, checks, f"linearity {len(ids)}", ids, names, args.stages, ours.phase.calls)
        points.append(LinearityPoint(len(ids), ours.phase.seconds))
    return points


# --- the probe: an unrelated approval during a bulk with notifications on --------------------------


class MailSink:
    """An SMTP server on 127.0.0.1 that accepts every message and counts it."""

    def __init__(self) -> None:
        sink = self
        self.received = 0

        class Handler(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                self.wfile.write(b"220 sink ESMTP\r\n")
                in_data = False
                for line in self.rfile:
                    if in_data:
                        if line.rstrip(b"\r\n") == b".":
                            in_data = False
                            sink.received += 1
                            self.wfile.write(b"250 queued\r\n")
                        continue
                    verb = line.split(b" ", 1)[0].strip().upper()
                    if verb == b"DATA":
                        in_data = True
                        self.wfile.write(b"354 go ahead\r\n")
                    elif verb == b"QUIT":
                        self.wfile.write(b"221 bye\r\n")
                        return
                    else:
                        self.wfile.write(b"250 ok\r\n")

        self.server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.port = self.server.server_address[1]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class HookHandler(QuietHandler):
    received = 0

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        HookHandler.received += 1
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")


@dataclass
class Probe:
    bulk: int
    filing_s: float
    bulk_s: float
    bare_s: float
    latencies: list[float]
    sent: str
    notes: str


def ensure_auto_stage(ctx: Context) -> Any:
    from promotions.models import Stage

    stage, _ = Stage.objects.update_or_create(
        name=AUTO_STAGE,
        defaults={
            "position": 110,
            "description": "Created by bench/scale.py",
            "mlflow_stage": STAGE_SPECS[0].mlflow_stage,
            "mlflow_alias": "",
            "archive_existing": False,
            "allow_from_none": False,
            "required_approvals": 0,
            "checks": "metric accuracy >= 0.5",
            "is_active": True,
        },
    )
    stage.allowed_from.clear()
    return stage


def run_probe(
    ctx: Context, args: argparse.Namespace, sink: MailSink, hook_url: str, server: ServerLog, checks: Checks
) -> Probe:
    from django.db import connection
    from django.db.models import Max
    from django.utils import timezone

    from promotions import notifications, services
    from promotions.models import OutboundDelivery, OutboundEmail, PromotionRequest, WebhookEndpoint

    for user, address in zip(ctx.users.values(), ("requester", "reviewer1", "reviewer2"), strict=True):
        user.email = f"bench-{address}@example.com"
        user.save(update_fields=["email"])
    WebhookEndpoint.objects.create(
        name="bench", url=hook_url, secret="bench-scale-secret", events=list(notifications.WEBHOOK_EVENTS)
    )
    auto = ensure_auto_stage(ctx)
    bulk_names = names_of(ctx.run_id, args.broker_label, "probe-bulk", args.probe_size)
    single_names = names_of(ctx.run_id, args.broker_label, "probe-single", args.probe_singles)
    singles = file_requests(ctx, items_for(single_names, 1), approve=False)
    pending = list(PromotionRequest.objects.filter(pk__in=singles).select_related("version__model", "stage"))
    workers = args.probe_workers
    outcome: dict[str, Any] = {}

    def bulk() -> None:
        try:
            started = time.perf_counter()
            outcome["result"] = services.promotion_requests_create_passing(
                stage=auto,
                requested_by=ctx.users["requester"],
                justification="bench/scale.py: a bulk with notifications on",
                model_names=bulk_names,
            )
            outcome["filing_s"] = time.perf_counter() - started
        except Exception as exc:  # noqa: BLE001 - reported by the main thread
            outcome["error"] = exc
        finally:
            connection.close()

    purge_queues(list(queue_names(ctx.queue).values()))
    with running_workers(ctx, workers, args.concurrency) as logs:
        mark = server.mark()
        started_wall = timezone.now()
        filing = threading.Thread(target=bulk)
        filing.start()
        next_at = time.monotonic() + 1.0
        for request in pending:
            time.sleep(max(0.0, next_at - time.monotonic()))
            approve_request(ctx, request)
            next_at += 1.0
        filing.join()
        if "error" in outcome:
            raise outcome["error"]
        result = outcome["result"]
        bulk_ids = [request.pk for request in result.filed]
        checks.record("probe: every bulk model filed", [str(x) for x in result.skipped + result.refused])
        wait_applied(bulk_ids + singles, logs[0], timeout=120 + 5 * len(bulk_ids))
        calls = server.calls_since(mark)
        done_wall = timezone.now()
        emails = Counter(OutboundEmail.objects.values_list("status", flat=True))
        hooks = Counter(OutboundDelivery.objects.values_list("status", flat=True))
    last = PromotionRequest.objects.filter(pk__in=bulk_ids).aggregate(last=Max("applied_at"))["last"]
    bulk_s = (last - started_wall).total_seconds()
    latencies = [
        (applied - decided).total_seconds()
        for decided, applied in PromotionRequest.objects.filter(pk__in=singles).values_list(
            "decided_at", "applied_at"
        )
    ]
    sent = (
        f"when every apply was done ({(done_wall - started_wall).total_seconds():.0f} s): "
        f"e-mails {dict(emails)}, webhooks {dict(hooks)}; "
        f"received so far {sink.received} mails, {HookHandler.received} posts"
    )
    check_ours(ctx, checks, "probe bulk", bulk_ids, bulk_names, 1, None)
    check_ours(ctx, checks, "probe singles", singles, single_names, 1, None)
    checks.record(
        "probe: no MLflow write lost or doubled (server access log)",
        write_problems(items_for(bulk_names + single_names, 1), calls),
    )
    bare_names = names_of(ctx.run_id, args.broker_label, "probe-bare", args.probe_size)
    threads = workers * args.concurrency
    bare = run_bare_patient(ctx, items_for(bare_names, 1), threads=threads, server=server)
    check_bare(ctx, checks, "probe bare", bare_names, 1, bare.calls)
    return Probe(len(bulk_ids), outcome["filing_s"], bulk_s, bare.seconds, latencies, sent, load())


# --- report ----------------------------------------------------------------------------------------


def rate(promotions: int, seconds: float) -> float:
    return promotions / seconds if seconds > 0 else float("inf")


def mlflow_limit(rows: list[WorkerRow], concurrency: int) -> str:
    """The first thread count past which the bare client gains less than 10 %: MLflow's limit."""
    points = [(row.workers * concurrency, rate(row.bare.promotions, row.bare.seconds)) for row in rows]
    for (threads, before), (more, after) in zip(points, points[1:], strict=False):
        if after < 1.1 * before:
            return (
                f"the bare client stops growing past {threads} threads ({before:.1f} -> {after:.1f} p/s at "
                f"{more}): from there MLflow (--workers 4 on this machine) is the limit"
            )
    if len(points) < 2:
        return "one thread count only: no limit can be read"
    return f"the bare client still grows at {points[-1][0]} threads: MLflow is not yet the limit"


def print_report(
    ctx: Context,
    args: argparse.Namespace,
    rows: list[WorkerRow],
    linearity: list[LinearityPoint],
    probe: Probe | None,
    checks: Checks,
) -> None:
    print()
    database = ctx.database_url.rsplit("/", 1)[-1]
    print(f"## {args.broker_label}: broker {ctx.broker}, database {database} (PostgreSQL)")
    print(
        f"{args.models} models x {args.stages} stages = {args.models * args.stages} promotions per phase; "
        f"MLflow server --workers 4 (SQLite store); {ctx.load_at_start} at the start"
    )
    print()
    print(
        "| W | threads | ours p/s | bare p/s | ratio | p50 s | p95 s "
        "| MLflow calls/promotion ours / bare | load | checks |"
    )
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | --- | --- |")
    for row in rows:
        ours, bare = row.ours.phase, row.bare
        ours_rate, bare_rate = rate(ours.promotions, ours.seconds), rate(bare.promotions, bare.seconds)
        calls = f"{ours.calls_per_promotion:.2f} / {bare.calls_per_promotion:.2f}"
        print(
            f"| {row.workers} | {row.workers * args.concurrency} | {ours_rate:.1f} | {bare_rate:.1f} "
            f"| {ours_rate / bare_rate:.2f} | {row.ours.p50:.2f} | {row.ours.p95:.2f} "
            f"| {calls} | {ours.notes.rsplit('; ', 1)[-1]} | {row.checks} |"
        )
    print("(p50/p95: from the enqueue that releases the approved requests to each one's applied_at)")
    worst = min(
        (
            rate(r.ours.phase.promotions, r.ours.phase.seconds) / rate(r.bare.promotions, r.bare.seconds)
            for r in rows
        ),
        default=0.0,
    )
    print(f"lowest ratio {worst:.2f} (target >= {TARGET_RATIO}: {'yes' if worst >= TARGET_RATIO else 'NO'})")
    print(f"MLflow limit: {mlflow_limit(rows, args.concurrency)}")
    if linearity:
        print()
        print(f"Linearity (W={args.linearity_workers}, concurrency {args.concurrency}):")
        print("| promotions | seconds | ms per promotion |")
        print("| ---: | ---: | ---: |")
        for point in linearity:
            per_ms = 1000 * point.seconds / point.promotions
            print(f"| {point.promotions} | {point.seconds:.2f} | {per_ms:.1f} |")
        per = [p.seconds / p.promotions for p in linearity]
        print(f"largest / smallest time per promotion: {max(per) / min(per):.2f} (1.00 is linear)")
    if probe:
        print()
        p95 = percentile(probe.latencies, 0.95)
        ratio = probe.bulk_s / probe.bare_s
        threads = args.probe_workers * args.concurrency
        print(
            f"Probe (W={args.probe_workers}, concurrency {args.concurrency}, webhooks and e-mail on): "
            f"a bulk of {probe.bulk} requests to an automatic stage, filed in {probe.filing_s:.1f} s, "
            f"all applied {probe.bulk_s:.1f} s after the bulk began; bare client, {threads} threads, "
            f"same writes: {probe.bare_s:.1f} s; ratio {ratio:.2f} "
            f"(target <= {TARGET_PROBE_BULK}: {'yes' if ratio <= TARGET_PROBE_BULK else 'NO'})"
        )
        p50, worst = percentile(probe.latencies, 0.5), max(probe.latencies)
        print(
            f"  {len(probe.latencies)} unrelated approvals, one a second during the bulk: "
            f"approval -> applied p50 {p50:.2f} s, p95 {p95:.2f} s, max {worst:.2f} s "
            f"(target p95 <= {TARGET_PROBE_P95} s: {'yes' if p95 <= TARGET_PROBE_P95 else 'NO'}); "
            f"{probe.notes}"
        )
        print(f"  notifications {probe.sent}")
    print()
    print("Checks:")
    for line in checks.lines:
        print(f"  {line}")
    print(f"{args.broker_label}: {checks.summary()}; at the end {load()}")


# --- one broker (a child process: Django reads its broker once) -----------------------------------


def create_database(name: str) -> str:
    import psycopg

    with psycopg.connect(f"{POSTGRES}/postgres", autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return f"postgres://postgres@127.0.0.1:5432/{name}"


def drop_database(name: str) -> None:
    import psycopg

    with psycopg.connect(f"{POSTGRES}/postgres", autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def run_broker(args: argparse.Namespace) -> int:
    tmp = Path(args.tmp) / args.broker_label
    sink = MailSink()
    hooks, hook_url = serve_in_thread(HookHandler)
    database = f"bench_scale_{args.run_id}_{args.broker_label}"
    database_url = args.database_url or create_database(database)
    checks = Checks()
    ctx: Context | None = None
    try:
        setup_django(
            tmp,
            mlflow_url=args.mlflow_url,
            database_url=database_url,
            broker_url=args.broker_url,
            extra_env={
                "PROMOTION_STUCK_AFTER_SECONDS": "86400",  # no worker takes over another's claim
                "LOG_LEVEL": "WARNING",
                "EMAIL_BACKEND": "django.core.mail.backends.smtp.EmailBackend",
                "EMAIL_HOST": "127.0.0.1",
                "EMAIL_PORT": str(sink.port),
                "WEBHOOK_ALLOW_PRIVATE_NETWORKS": "true",  # the receiver is on loopback
                # MLflow's client keeps 10 connections a host: past 10 threads the bare client
                # would reconnect for every call and be slowed by its own pool.
                "MLFLOW_HTTP_POOL_MAXSIZE": str(max(64, max(args.workers) * args.concurrency)),
            },
        )
        from django.core.management import CommandError, call_command

        from config.celery import app

        queues = f"bs-{args.run_id}-{args.broker_label}"
        own_queues(app, queues)
        ctx = Context(
            args.mlflow_url,
            tmp,
            args.run_id,
            queues,
            args.broker_url,
            database_url,
            args.experiment_id,
            load_at_start=load(),
        )
        ensure_catalog(ctx)
        log(f"{args.broker_label}: mirror synced in {sync_mirror():.1f} s")
        server = ServerLog(Path(args.mlflow_log))
        rows = [run_workers_row(ctx, args, workers, server, checks) for workers in args.workers]
        linearity = run_linearity(ctx, args, rows, server, checks)
        probe = None
        if args.probe:
            try:
                probe = run_probe(ctx, args, sink, hook_url, server, checks)
            except Exception as exc:  # noqa: BLE001 - a FAIL in the report, with the phases above it
                checks.record("probe: ran to the end", [f"{type(exc).__name__}: {exc}"])
        try:
            call_command("verify_audit_log", stdout=open(os.devnull, "w"))  # noqa: SIM115
            checks.record("verify_audit_log: the audit chain holds", [])
        except CommandError as exc:
            checks.record("verify_audit_log: the audit chain holds", [str(exc)])
        print_report(ctx, args, rows, linearity, probe, checks)
    finally:
        if ctx is not None:
            delete_queues(list(queue_names(ctx.queue).values()))
        from django.db import connections

        connections.close_all()
        if not args.database_url:
            drop_database(database)
        stop_serving(hooks)
        sink.close()
    return 1 if checks.failures else 0


# --- main: the MLflow server and every set of models, then one child per broker --------------------


def int_list(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part.strip()]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--brokers", default="redis,rabbitmq", help="redis, rabbitmq or NAME=URL, comma-separated"
    )
    parser.add_argument(
        "--database-url", help="default: a fresh PostgreSQL database per broker, dropped at the end"
    )
    parser.add_argument("--models", type=int, help="models per set (default 500; --quick 40)")
    parser.add_argument("--stages", type=int, default=2, choices=range(1, len(STAGE_SPECS) + 1))
    parser.add_argument("--workers", type=int_list, default=[1, 2, 4], help="worker process counts")
    parser.add_argument("--concurrency", type=int, default=8, help="threads per worker process")
    parser.add_argument("--linearity", type=int_list, help="promotions per size (default 250,500,1000)")
    parser.add_argument("--linearity-workers", type=int, default=2)
    parser.add_argument(
        "--probe", action="store_true", help="the bulk with notifications on and single approvals"
    )
    parser.add_argument("--probe-size", type=int, help="requests in the bulk (default 1000; --quick 100)")
    parser.add_argument("--probe-singles", type=int, help="unrelated approvals (default 20; --quick 5)")
    parser.add_argument("--probe-workers", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="a smoke size for development")
    parser.add_argument("--populate-threads", type=int, default=16)
    parser.add_argument("--filing-threads", type=int, default=1, help="threads filing and approving (set-up)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory (logs)")
    for hidden in (
        "--broker-label",
        "--broker-url",
        "--mlflow-url",
        "--mlflow-log",
        "--run-id",
        "--experiment-id",
        "--tmp",
    ):
        parser.add_argument(hidden, help=argparse.SUPPRESS)
    args = parser.parse_args()
    quick = args.quick
    args.models = args.models or (40 if quick else 500)
    args.linearity = args.linearity or ([40, 80] if quick else [250, 500, 1000])
    args.probe_size = args.probe_size or (100 if quick else 1000)
    args.probe_singles = args.probe_singles or (5 if quick else 20)
    for promotions in args.linearity:
        if promotions % args.stages:
            parser.error(f"--linearity: {promotions} promotions is not a multiple of {args.stages} stages")
    return args


def brokers(text: str) -> dict[str, str]:
    chosen = {}
    for part in text.split(","):
        label, _, url = part.strip().partition("=")
        if not url and label not in BROKERS:
            raise SystemExit(f"--brokers: {label!r} is neither {' nor '.join(BROKERS)} nor NAME=URL")
        chosen[label] = url or BROKERS[label]
    return chosen


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main() -> int:
    args = parse_args()
    signal.signal(signal.SIGTERM, _interrupt)  # unwinds like Ctrl-C: every finally stops its processes
    if args.broker_label:
        return run_broker(args)
    os.environ["PYTHONUNBUFFERED"] = "1"  # the MLflow server's access log, line by line
    chosen = brokers(args.brokers)
    tmp = Path(tempfile.mkdtemp(prefix="bench-scale-"))
    run_id = uuid.uuid4().hex[:6]
    started = time.perf_counter()
    status = 0
    try:
        with mlflow_server(tmp / "mlflow", workers=4) as url:
            experiment_id = new_client(url).create_experiment(f"bench-scale-{run_id}")
            plan = Plan.of(args)
            by_stages: dict[int, list[str]] = {}
            for label in chosen:
                for set_label, models, stages in plan.sets:
                    by_stages.setdefault(stages, []).extend(names_of(run_id, label, set_label, models))
            total = sum(len(names) for names in by_stages.values())
            log(f"MLflow at {url}; populating {total} models for {', '.join(chosen)} ({load()})")
            maker = Context(url, tmp, run_id, "", "", "", experiment_id)
            populate_started = time.perf_counter()
            for stages, names in by_stages.items():
                populate(maker, names, stages, threads=args.populate_threads)
            log(f"populated {total} models in {time.perf_counter() - populate_started:.1f} s ({load()})")
            for label, broker_url in chosen.items():
                log(f"{label}: {broker_url}")
                child = subprocess.run(
                    [
                        sys.executable,
                        __file__,
                        *sys.argv[1:],
                        *("--broker-label", label, "--broker-url", broker_url, "--mlflow-url", url),
                        *("--mlflow-log", str(tmp / "mlflow" / "mlflow.log"), "--run-id", run_id),
                        *("--experiment-id", experiment_id, "--tmp", str(tmp)),
                    ],
                    check=False,
                )
                status = status or child.returncode
        print(f"\nwhole run: {time.perf_counter() - started:.0f} s; at the end {load()}")
    finally:
        if args.keep:
            log(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    return status


if __name__ == "__main__":
    sys.exit(main())
