"""Benchmark: how much slower is our Celery apply path than simply calling MLflow?

Starts its own MLflow server (SQLite store, `--workers 4`, in a temporary directory), a throwaway
Django database (SQLite by default, or --database-url) and real Celery worker processes (the
project's app, `celery -A bench.apply:worker_app worker --pool threads`; see worker_app below),
then, for each size M models x S stages (S <= 3), on separate but identical sets of M registered
models with S+1 versions each (every version backed by its own run with metrics):

  (a)  a bare MlflowClient loop doing the same MLflow writes serially: per promotion the stage
       transition (or alias move), the displaced holder's closed stage record where the product
       writes one, plus the same five provenance tags (set_model_version_tag), the model files'
       digest among them;
  (b)  our worker with --concurrency 1: S x M requests approved through the product's services
       (two reviewers), then enqueued with promotions.services.enqueue_apply; timed from the first
       enqueue until the last `applied_at` in the database;
  (c)  our worker with --concurrency 8 against the same bare writes from a ThreadPoolExecutor(8).

The bench stages are "Bench Staging" (legacy stage Staging), "Bench Production" (legacy stage
Production, archive_existing) and "Bench Champion" (alias champion); each needs two approvals and
has one check (`metric accuracy >= 0.5`). Version 1 of every model starts in Production (Staging
when S = 1) and, when S = 3, holds the alias champion, so the promotions displace a previous
holder; it carries the stage records a promotion by the product would have left (`seeded_tags`),
so the Production and champion promotions close them (one write more each, in every phase).
Version k+1 is promoted to bench stage k. The same calls are made to every set (checked).
Every version has two small model files (MLmodel, model.pkl); the product records their manifest
when it files a request (set-up, not timed) and checks it again in each apply (the reads of
PROMOTION_MANIFEST_CHECK, `full` unless set: one listing and one download per file), which the
bare client does not do: that is the cost of binding approvals to the files.

It prints b/a (target <= 1.15) and the throughput of (c) as a fraction of the threaded bare client
(target >= 0.85), the time per promotion at every size, the MLflow calls per promotion of every
phase (counted from the MLflow server's access log, so the worker process is counted too), the CPU
time per promotion of the MLflow server, the client and this process (from /proc), the p50/p95
time from approval commit (decided_at) to applied (applied_at) with a concurrency-8 worker while
requests are approved one at a time at about half its measured capacity, and an in-process
breakdown of promotion_apply (time per MLflow endpoint, the rest, and a cProfile of our own
functions). Nothing is asserted on timings; the machine's load average is printed with each phase.

Run from the repository root:

    .venv/bin/python bench/apply.py                                  # 10x1, 20x2, 25x3 (~5 min)
    .venv/bin/python bench/apply.py --sizes 10x1,50x2,100x3          # ~13 min on 2 cores
    .venv/bin/python bench/apply.py --broker sqla+sqlite:////tmp/broker.sqlite3
    .venv/bin/python bench/apply.py --database-url postgres://postgres@127.0.0.1:5432/bench_apply

The broker defaults to Redis at redis://127.0.0.1:6379/7 when it answers, else kombu's SQLite
transport in the temporary directory; every task (the benchmark's and those the worker publishes)
goes to a queue of its own (bench-apply-<id>), deleted at the end, so other developers' workers on
the same broker neither take nor give tasks. var/ and the developer's databases are never touched.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import random
import re
import shutil
import signal
import sys
import tempfile
import threading
import time
import uuid
import warnings
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (  # noqa: E402
    fmt_seconds,
    mlflow_server,
    setup_django,
    start_celery_worker,
    stop_process_group,
    wait_for_process,
)
from promotions import provenance  # noqa: E402 - no Django needed: keys and values only

TARGET_B = 1.15
TARGET_C = 0.85
DEFAULT_SIZES = "10x1,20x2,25x3"  # about 5 minutes on 2 cores; 10x1,50x2,100x3 about 13
DEFAULT_REDIS = "redis://127.0.0.1:6379/7"
POLL_SECONDS = 0.1  # the elapsed time comes from applied_at, not from when the poll saw it
APPROVERS = [
    "bench-reviewer-1",
    "bench-reviewer-2",
]  # usernames, as our tags carry them; the bare loop copies them
SEEDED_AT = "2026-01-01T00:00:00.000000+00:00"  # when version 1 "was promoted" (seeded_tags)
warnings.filterwarnings("ignore", category=FutureWarning)  # legacy stages, deprecated in MLflow


@dataclass(frozen=True)
class StageSpec:
    name: str
    mlflow_stage: str
    mlflow_alias: str
    archive_existing: bool


STAGE_SPECS = (
    StageSpec("Bench Staging", "Staging", "", False),
    StageSpec("Bench Production", "Production", "", True),
    StageSpec("Bench Champion", "", "champion", False),
)


@dataclass(frozen=True)
class Size:
    models: int
    stages: int

    @property
    def label(self) -> str:
        return f"{self.models}x{self.stages}"

    @property
    def promotions(self) -> int:
        return self.models * self.stages


@dataclass(frozen=True)
class Item:
    """One promotion: version `number` of model `name` to bench stage `spec`."""

    name: str
    number: int
    spec: StageSpec


@dataclass
class Phase:
    label: str
    promotions: int
    seconds: float
    calls: Counter[str] = field(default_factory=Counter)
    notes: str = ""
    cpu: dict[str, float] = field(default_factory=dict)

    @property
    def per_promotion_ms(self) -> float:
        return 1000 * self.seconds / self.promotions

    @property
    def calls_per_promotion(self) -> float:
        return sum(self.calls.values()) / self.promotions


@dataclass
class SizeResult:
    size: Size
    populate_s: float
    sync_s: float
    file_s: float
    a: Phase
    b: Phase
    c_bare: Phase
    c_ours: Phase


@dataclass
class Context:
    url: str
    tmp: Path
    run_id: str
    queue: str
    broker: str
    database_url: str
    experiment_id: str
    stages: dict[str, Any] = field(default_factory=dict)  # spec name -> promotions.models.Stage
    users: dict[str, Any] = field(default_factory=dict)
    workers: int = 0
    load_at_start: str = ""


def log(message: str) -> None:
    print(f"[{datetime.now().strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def load() -> str:
    """The machine's load average: the figures are only as quiet as the machine was."""
    one, five, _ = os.getloadavg()
    return f"load {one:.1f}/{five:.1f}"


def parse_sizes(text: str) -> list[Size]:
    sizes = []
    for part in text.split(","):
        match = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", part)
        if not match:
            raise SystemExit(f"--sizes: {part!r} is not MODELSxSTAGES, e.g. 50x2")
        size = Size(int(match.group(1)), int(match.group(2)))
        if size.models < 1 or not 1 <= size.stages <= len(STAGE_SPECS):
            raise SystemExit(f"--sizes: {part!r}: at least 1 model and 1 to {len(STAGE_SPECS)} stages")
        sizes.append(size)
    return sizes


def percentile(values: list[float], fraction: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    rank = max(1, int(-(-fraction * len(ordered) // 1)))
    return ordered[min(rank, len(ordered)) - 1]


# --- counting MLflow calls -----------------------------------------------------------------------

_ACCESS_LINE = re.compile(r'"(GET|POST|PATCH|DELETE|PUT) /(?:ajax-)?api/2\.0/mlflow/([^ ?"]+)')


class ServerLog:
    """The MLflow server's access log: one line per request, whoever made it (worker included)."""

    def __init__(self, path: Path):
        self.path = path

    def mark(self) -> int:
        return self.path.stat().st_size

    def calls_since(self, offset: int) -> Counter[str]:
        time.sleep(0.5)  # uvicorn writes the access line just after the response
        with open(self.path, "rb") as handle:
            handle.seek(offset)
            text = handle.read().decode(errors="replace")
        return Counter(f"{m.group(1)} {m.group(2)}" for m in _ACCESS_LINE.finditer(text))


class ClientTimer:
    """Wraps mlflow.utils.rest_utils.http_request in this process: time per endpoint."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.samples: dict[str, list[float]] = defaultdict(list)

    def install(self) -> None:
        from mlflow.utils import rest_utils

        original = rest_utils.http_request

        def timed(host_creds: Any, endpoint: str, method: str, *args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return original(host_creds, endpoint, method, *args, **kwargs)
            finally:
                elapsed = time.perf_counter() - started
                key = f"{method} {endpoint.removeprefix('/api/2.0/mlflow/')}"
                with self.lock:
                    self.samples[key].append(elapsed)

        rest_utils.http_request = timed

    def reset(self) -> dict[str, list[float]]:
        with self.lock:
            samples, self.samples = self.samples, defaultdict(list)
        return samples


TIMER = ClientTimer()


# --- CPU time, from /proc (Linux) ----------------------------------------------------------------

_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _proc_table() -> dict[int, tuple[int, float]]:
    """pid -> (parent pid, user+system CPU seconds of the process itself)."""
    table = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        table[int(entry.name)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / _TICKS)
    return table


def _tree(table: dict[int, tuple[int, float]], root: int) -> set[int]:
    pids, frontier = {root}, [root]
    while frontier:
        parent = frontier.pop()
        children = [pid for pid, (ppid, _) in table.items() if ppid == parent and pid not in pids]
        pids.update(children)
        frontier.extend(children)
    return pids


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def cpu_snapshot(worker_pid: int | None = None) -> dict[str, float]:
    """CPU seconds so far of the MLflow server's processes, the worker's, and this process."""
    if not Path("/proc/self/stat").exists():
        return {}
    table = _proc_table()
    me = os.getpid()
    servers = [pid for pid, (ppid, _) in table.items() if ppid == me and "mlflow" in _cmdline(pid)]
    snapshot = {"this process": time.process_time()}
    snapshot["MLflow server"] = sum(table[pid][1] for root in servers for pid in _tree(table, root))
    if worker_pid is not None:
        snapshot["worker"] = sum(table[pid][1] for pid in _tree(table, worker_pid) if pid in table)
    return snapshot


def cpu_since(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {key: after[key] - before[key] for key in after if key in before}


# --- MLflow: populating and the bare client ------------------------------------------------------


def new_client(url: str) -> Any:
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=url, registry_uri=url)


def thread_local_client(url: str) -> Callable[[], Any]:
    local = threading.local()

    def get() -> Any:
        if not hasattr(local, "client"):
            local.client = new_client(url)
        return local.client

    return get


def populate(ctx: Context, names: list[str], stages: int, threads: int = 8) -> None:
    """Each model: S+1 versions, each from its own run (metrics + params); v1 holds the stages."""
    from mlflow.entities import Metric, Param

    client = thread_local_client(ctx.url)
    holder_stage = "Production" if stages >= 2 else "Staging"

    def one_model(name: str) -> None:
        mlflow = client()
        rng = random.Random(name)
        mlflow.create_registered_model(name, description="bench/apply.py")
        now = int(time.time() * 1000)
        for _ in range(stages + 1):
            run = mlflow.create_run(ctx.experiment_id, tags={"bench": "apply"})
            mlflow.log_batch(
                run.info.run_id,
                metrics=[
                    Metric("accuracy", round(rng.uniform(0.80, 0.99), 4), now, 0),
                    Metric("loss", round(rng.uniform(0.05, 0.4), 4), now, 0),
                ],
                params=[Param("depth", str(rng.randint(4, 12))), Param("lr", "0.01")],
            )
            for artifact_file, text in MODEL_FILES.items():
                mlflow.log_text(run.info.run_id, text, f"model/{artifact_file}")
            mlflow.create_model_version(
                name, f"runs:/{run.info.run_id}/model", run_id=run.info.run_id, await_creation_for=0
            )
        mlflow.transition_model_version_stage(name, "1", holder_stage)
        if stages >= 3:
            mlflow.set_registered_model_alias(name, "champion", "1")
        for key, value in seeded_tags(stages).items():
            mlflow.set_model_version_tag(name, "1", key, value)

    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(one_model, names))


# A version's model files: what the manifest records and each apply checks again.
MODEL_FILES = {"MLmodel": "flavors:\n  python_function: {}\n", "model.pkl": "bench " * 512}
# The bare client writes the digest tag as the product does; its value does not change the cost.
BARE_ARTIFACT_SHA256 = "0" * 64


def seeded_tags(stages: int) -> dict[str, str]:
    """Version 1's stage records, as the product's promotions to the stages it holds would leave them."""
    held = [STAGE_SPECS[1] if stages >= 2 else STAGE_SPECS[0]] + ([STAGE_SPECS[2]] if stages >= 3 else [])
    tags: dict[str, str] = {}
    for request_id, spec in enumerate(held, start=1):
        tags.update(
            provenance.promotion_tags(
                request_id=request_id, stage_name=spec.name, approved_by=APPROVERS, at=SEEDED_AT
            )
        )
    return tags


def items_for(names: list[str], stages: int) -> list[Item]:
    """Stage-major order (every model to stage 1, then to stage 2, ...), the same for every phase."""
    return [Item(name, k + 2, STAGE_SPECS[k]) for k in range(stages) for name in names]


def bare_apply(client: Any, item: Item, request_id: int) -> None:
    """The MLflow writes one promotion needs, and nothing else."""
    version = str(item.number)
    if item.spec.mlflow_stage:
        client.transition_model_version_stage(
            item.name, version, item.spec.mlflow_stage, archive_existing_versions=item.spec.archive_existing
        )
    if item.spec.mlflow_alias:
        client.set_registered_model_alias(item.name, item.spec.mlflow_alias, version)
    at = datetime.now(UTC).isoformat(timespec="microseconds")
    if item.spec.archive_existing or item.spec.mlflow_alias:
        # Version 1 holds the stage with a record (seeded_tags): the product closes it, so do we.
        # Its tags are known here without a read, as the product knows them from its own reads.
        closed = provenance.displacement(
            seeded_tags(len(STAGE_SPECS)), stage_name=item.spec.name, request_id=request_id, at=at
        )
        if closed is not None:
            client.set_model_version_tag(item.name, "1", *closed)
    tags = provenance.promotion_tags(
        request_id=request_id,
        stage_name=item.spec.name,
        approved_by=APPROVERS,
        at=at,
        artifact_sha256=BARE_ARTIFACT_SHA256,
    )
    for key, value in tags.items():
        client.set_model_version_tag(item.name, version, key, value)


def run_bare(ctx: Context, items: list[Item], *, threads: int, label: str, server: ServerLog) -> Phase:
    client = thread_local_client(ctx.url)
    client()  # construct before the clock starts (one client per thread, as a real script would)
    mark = server.mark()
    TIMER.reset()
    cpu_before = cpu_snapshot()
    started = time.perf_counter()
    if threads == 1:
        for index, item in enumerate(items):
            bare_apply(client(), item, index + 1)
    else:
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(lambda pair: bare_apply(client(), pair[1], pair[0] + 1), enumerate(items)))
    seconds = time.perf_counter() - started
    cpu = cpu_since(cpu_before, cpu_snapshot())
    return Phase(label, len(items), seconds, server.calls_since(mark), load(), cpu)


def registry_state(client: Any, name: str) -> tuple[dict[int, str], dict[str, int], int]:
    """(stage by version, aliases, number of promotion.* tags) of one model, to compare the sets."""
    versions = client.search_model_versions(f"name = '{name}'")
    model = client.get_registered_model(name)
    stages = dict(sorted((int(v.version), v.current_stage) for v in versions))
    tags = sum(1 for v in versions for key in (v.tags or {}) if key.startswith("promotion."))
    return stages, dict(sorted((k, int(v)) for k, v in (model.aliases or {}).items())), tags


# --- Django: catalog, requests, worker ------------------------------------------------------------


def choose_broker(requested: str | None, tmp: Path) -> str:
    if requested:
        return requested
    try:
        import redis

        redis.Redis.from_url(DEFAULT_REDIS, socket_connect_timeout=1, socket_timeout=1).ping()
        return DEFAULT_REDIS
    except Exception as exc:
        log(f"Redis at {DEFAULT_REDIS} is not answering ({type(exc).__name__}); using the SQLite broker")
        return f"sqla+sqlite:///{tmp / 'broker.sqlite3'}"


def setup_django_with_own_queue(
    *, tmp: Path, database_url: str, broker: str, mlflow_url: str, queue: str
) -> None:
    setup_django(
        tmp,
        mlflow_url=mlflow_url,
        database_url=database_url,
        broker_url=broker,
        extra_env={
            "PROMOTION_STUCK_AFTER_SECONDS": "86400",  # no worker takes over another's claim
            "LOG_LEVEL": "WARNING",
            "PYTHONUNBUFFERED": "1",
        },
    )
    from config.celery import app

    own_queue(app, queue)


def own_queue(app, queue: str) -> None:
    """Every task of the benchmark in one queue of its own (the product's routes to its apply,
    sync and notify queues left out): other developers' workers on the same broker neither take
    nor give tasks."""
    app.conf.task_default_queue = queue
    app.conf.task_routes = {}
    app.conf.task_queues = None


def __getattr__(name: str) -> Any:
    """`celery -A bench.apply:worker_app worker`: the project's app (config.celery.app, the same as
    `-A config`) with its default queue set to the benchmark's, so that the tasks the worker itself
    publishes (e.g. the e-mail of `promotion.applied`) stay in our queue too."""
    if name == "worker_app":
        from config.celery import app

        own_queue(app, os.environ["BENCH_APPLY_QUEUE"])
        return app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def ensure_catalog(ctx: Context) -> None:
    from django.contrib.auth.models import Group, User

    from promotions import roles
    from promotions.models import Stage

    reviewers = Group.objects.get(name=roles.REVIEWERS)
    requesters = Group.objects.get(name=roles.REQUESTERS)

    def user(username: str, group: Any, first: str, last: str) -> Any:
        row, _ = User.objects.get_or_create(
            username=username, defaults={"first_name": first, "last_name": last}
        )
        row.groups.add(group)
        return row

    ctx.users = {
        "requester": user("bench-requester", requesters, "Bench", "Requester"),
        "reviewer1": user("bench-reviewer-1", reviewers, "Bench", "Reviewer-One"),
        "reviewer2": user("bench-reviewer-2", reviewers, "Bench", "Reviewer-Two"),
    }
    for position, spec in enumerate(STAGE_SPECS, start=100):
        stage, _ = Stage.objects.update_or_create(
            name=spec.name,
            defaults={
                "position": position,
                "description": "Created by bench/apply.py",
                "mlflow_stage": spec.mlflow_stage,
                "mlflow_alias": spec.mlflow_alias,
                "archive_existing": spec.archive_existing,
                "allow_from_none": False,
                "required_approvals": 2,
                "checks": "metric accuracy >= 0.5",
                "is_active": True,
            },
        )
        stage.allowed_from.clear()  # from any stage
        stage.approver_groups.set([reviewers])
        ctx.stages[spec.name] = stage


def sync_mirror() -> float:
    from registry_sync.models import SyncRun
    from registry_sync.services import sync_registry

    started = time.perf_counter()
    sync_registry(trigger=SyncRun.Trigger.COMMAND)
    return time.perf_counter() - started


def file_requests(ctx: Context, items: list[Item], *, approve: bool) -> list[int]:
    """File through promotions.services and (optionally) approve with two reviewers."""
    from promotions import services
    from promotions.models import PromotionRequest
    from registry_sync.models import ModelVersion

    names = sorted({item.name for item in items})
    versions = {
        (row.model.name, row.version): row
        for row in ModelVersion.objects.select_related("model").filter(model__name__in=names)
    }
    ids = []
    for item in items:
        request = services.promotion_request_create(
            version=versions[(item.name, item.number)],
            stage=ctx.stages[item.spec.name],
            requested_by=ctx.users["requester"],
            justification="bench/apply.py: throughput of the apply path",
        )
        # What the worker does after filing; here, so the timed phases are applies alone.
        services.request_manifest_compute(request_id=request.pk)
        request.refresh_from_db()
        if approve:
            request = approve_request(ctx, request)
            if request.status != PromotionRequest.Status.APPROVED:
                raise RuntimeError(f"request #{request.pk} is {request.status} after two approvals")
        ids.append(request.pk)
    return ids


def approve_request(ctx: Context, request: Any) -> Any:
    from promotions import services

    request = services.review_approve(request=request, reviewer=ctx.users["reviewer1"])
    return services.review_approve(request=request, reviewer=ctx.users["reviewer2"])


def purge_queue(ctx: Context) -> int:
    """Drop the tasks the approvals enqueued on commit: each timed phase enqueues its own."""
    return purge_queues([ctx.queue])


def purge_queues(names: list[str]) -> int:
    from config.celery import app

    purged = 0
    with app.connection_for_write() as conn:
        for name in names:
            try:
                purged += conn.default_channel.queue_purge(name) or 0
            except Exception:
                pass  # a queue nobody declared yet has nothing to purge
    return purged


def delete_queue(ctx: Context) -> None:
    """Drop our queue and its bindings (and whatever is left in it, e.g. e-mail tasks)."""
    delete_queues([ctx.queue])


def delete_queues(names: list[str]) -> None:
    """Drop each queue (with its direct exchange of the same name) and its bindings."""
    from kombu import Exchange, Queue

    from config.celery import app

    for name in names:
        try:
            with app.connection_for_write() as conn:
                # Declared here so that this channel knows the binding it must remove.
                queue = Queue(name, Exchange(name, type="direct"), routing_key=name)
                bound = queue(conn.default_channel)
                bound.declare()
                bound.purge()
                bound.delete()
                bound.exchange.delete()
        except Exception as exc:
            log(f"could not delete queue {name}: {exc}")


@dataclass(frozen=True)
class RunningWorker:
    log_path: Path
    pid: int


@contextmanager
def running_worker(ctx: Context, concurrency: int) -> Iterator[RunningWorker]:
    """A real `celery ... worker --pool threads` process of config.celery.app on our queue, ready
    when yielded."""
    from promotions.models import WorkerHeartbeat
    from promotions.tasks import record_heartbeat

    purged = purge_queue(ctx)
    if purged:
        log(f"purged {purged} task(s) the approvals had enqueued")
    ctx.workers += 1
    log_path = ctx.tmp / f"worker-{ctx.workers}-c{concurrency}.log"
    process = start_celery_worker(
        "bench.apply:worker_app",  # config.celery.app, publishing to our queue (see worker_app)
        log_path=log_path,
        env={**os.environ, "BENCH_APPLY_QUEUE": ctx.queue},
        concurrency=concurrency,
        name="bench-apply",
        options=("--queues", ctx.queue),
    )
    try:
        marker = f"bench-apply-{uuid.uuid4().hex}"
        record_heartbeat.apply_async(args=[marker], retry=False)
        wait_for_process(
            process,
            lambda: WorkerHeartbeat.objects.filter(marker=marker).exists(),
            what="the worker",
            timeout=90,
            interval=0.1,
            log_path=log_path,
        )
        yield RunningWorker(log_path, process.pid)
    finally:
        stop_process_group(process)


def wait_applied(ids: list[int], log_path: Path, timeout: float) -> None:
    from django.db.models import Count

    from promotions.models import PromotionRequest

    Status = PromotionRequest.Status
    deadline = time.monotonic() + timeout
    while True:
        counts = dict(
            PromotionRequest.objects.filter(pk__in=ids)
            .values_list("status")
            .annotate(n=Count("pk"))
            .values_list("status", "n")
        )
        if counts.get(Status.FAILED):
            errors = PromotionRequest.objects.filter(pk__in=ids, status=Status.FAILED).values_list(
                "pk", "last_error"
            )[:5]
            raise RuntimeError(f"{counts[Status.FAILED]} request(s) failed: {list(errors)}")
        if counts.get(Status.APPLIED, 0) == len(ids):
            return
        if time.monotonic() > deadline:
            tail = log_path.read_text(errors="replace")[-3000:]
            raise RuntimeError(f"not all applied after {timeout:.0f} s: {counts}\n{tail}")
        time.sleep(POLL_SECONDS)


def enqueue_all(ids: list[int]) -> float:
    """Publish every request's apply, as the approvals' commits would; the seconds it took."""
    from promotions import services

    started = time.perf_counter()
    for request_id in ids:
        if not services.enqueue_apply(request_id):
            raise RuntimeError(f"could not enqueue request #{request_id}")
    return time.perf_counter() - started


def run_worker(ctx: Context, ids: list[int], *, concurrency: int, label: str, server: ServerLog) -> Phase:
    from django.db.models import Max
    from django.utils import timezone

    from promotions.models import PromotionRequest

    with running_worker(ctx, concurrency) as worker:
        mark = server.mark()
        cpu_before = cpu_snapshot(worker.pid)
        started_wall = timezone.now()
        started = time.perf_counter()
        enqueued = enqueue_all(ids)
        wait_applied(ids, worker.log_path, timeout=120 + 5 * len(ids))
        polled = time.perf_counter() - started
        cpu = cpu_since(cpu_before, cpu_snapshot(worker.pid))
        calls = server.calls_since(mark)
    last = PromotionRequest.objects.filter(pk__in=ids).aggregate(last=Max("applied_at"))["last"]
    seconds = (last - started_wall).total_seconds()
    notes = f"enqueueing took {enqueued:.2f} s; seen applied by polling after {polled:.2f} s; {load()}"
    return Phase(label, len(ids), seconds, calls, notes, cpu)


# --- one size ------------------------------------------------------------------------------------


def model_names(ctx: Context, size: Size, set_label: str) -> list[str]:
    return [f"bench-apply-{ctx.run_id}-{size.label}-{set_label}-{i:04d}" for i in range(size.models)]


def run_size(ctx: Context, size: Size, server: ServerLog) -> SizeResult:
    log(f"size {size.label}: {size.promotions} promotions per phase")
    sets = {label: model_names(ctx, size, label) for label in ("a", "b", "cbare", "cours")}
    started = time.perf_counter()
    populate(ctx, [name for names in sets.values() for name in names], size.stages)
    populate_s = time.perf_counter() - started
    log(f"  populated 4 x {size.models} models x {size.stages + 1} versions in {populate_s:.1f} s")
    sync_s = sync_mirror()
    started = time.perf_counter()
    ids_b = file_requests(ctx, items_for(sets["b"], size.stages), approve=True)
    ids_c = file_requests(ctx, items_for(sets["cours"], size.stages), approve=True)
    file_s = time.perf_counter() - started
    log(
        f"  mirror synced in {sync_s:.1f} s; "
        f"{len(ids_b) + len(ids_c)} requests filed+approved in {file_s:.1f} s"
    )

    a = run_bare(
        ctx, items_for(sets["a"], size.stages), threads=1, label="(a) bare client, serial", server=server
    )
    log(f"  (a) {a.seconds:.2f} s ({a.notes})")
    b = run_worker(ctx, ids_b, concurrency=1, label="(b) our worker, concurrency 1", server=server)
    log(f"  (b) {b.seconds:.2f} s ({b.notes})")
    c_bare = run_bare(
        ctx,
        items_for(sets["cbare"], size.stages),
        threads=8,
        label="(c) bare client, 8 threads",
        server=server,
    )
    log(f"  (c) bare {c_bare.seconds:.2f} s ({c_bare.notes})")
    c_ours = run_worker(ctx, ids_c, concurrency=8, label="(c) our worker, concurrency 8", server=server)
    log(f"  (c) ours {c_ours.seconds:.2f} s ({c_ours.notes})")

    client = new_client(ctx.url)
    for index in (0, size.models - 1):
        states = {label: registry_state(client, names[index]) for label, names in sets.items()}
        if len({repr(state) for state in states.values()}) != 1:
            raise RuntimeError(f"the four sets disagree on model #{index}: {states}")
    return SizeResult(size, populate_s, sync_s, file_s, a, b, c_bare, c_ours)


# --- latency and the in-process breakdown --------------------------------------------------------


@dataclass
class Latency:
    promotions: int
    interval: float
    seconds: list[float]
    notes: str = ""


def half_capacity(results: list[SizeResult]) -> float:
    largest = results[-1]
    return max(0.2, round(2 * largest.c_ours.seconds / largest.c_ours.promotions, 2))


def requests_on_new_models(ctx: Context, size: Size, set_label: str, *, approve: bool) -> list[int]:
    """A new set of models in MLflow, mirrored, with a request filed for each promotion."""
    names = model_names(ctx, size, set_label)
    populate(ctx, names, size.stages)
    sync_mirror()
    return file_requests(ctx, items_for(names, size.stages), approve=approve)


def run_latency(ctx: Context, models: int, stages: int, interval: float) -> Latency:
    """Approve one request every `interval` s while a concurrency-8 worker runs."""
    from promotions.models import PromotionRequest

    ids = requests_on_new_models(ctx, Size(models, stages), "latency", approve=False)
    requests = list(PromotionRequest.objects.filter(pk__in=ids).select_related("version__model", "stage"))
    log(f"latency: {len(ids)} pending requests; approving one every {interval:.2f} s")
    with running_worker(ctx, 8) as worker:
        next_at = time.monotonic()
        for request in requests:
            approve_request(ctx, request)
            next_at += interval
            time.sleep(max(0.0, next_at - time.monotonic()))
        wait_applied(ids, worker.log_path, timeout=120 + 5 * len(ids))
    rows = PromotionRequest.objects.filter(pk__in=ids).values_list("decided_at", "applied_at")
    latencies = [(applied - decided).total_seconds() for decided, applied in rows]
    return Latency(len(ids), interval, latencies, load())


@dataclass
class Breakdown:
    promotions: int
    seconds: float
    samples: dict[str, list[float]]
    bare_samples: dict[str, list[float]]
    bare_seconds: float
    client_construct_ms: float
    profile_text: str


def run_breakdown(ctx: Context, models: int, stages: int, server: ServerLog) -> Breakdown:
    """promotions.services.promotion_apply in this process, with every MLflow call timed."""
    from promotions import services

    size = Size(models, stages)
    ids = requests_on_new_models(ctx, size, "profile", approve=True)
    purge_queue(ctx)
    bare_names = model_names(ctx, size, "profile-bare")
    populate(ctx, bare_names, stages)
    bare = run_bare(ctx, items_for(bare_names, stages), threads=1, label="bare", server=server)
    bare_samples = TIMER.reset()
    log(f"breakdown: bare {bare.seconds:.2f} s for {bare.promotions}; applying {len(ids)} in-process")

    from registry_sync import gateway

    gateway._client()  # the first construction imports and caches; time the steady state
    started = time.perf_counter()
    for _ in range(200):
        gateway._client()
    construct_ms = (time.perf_counter() - started) / 200 * 1000

    profiler = cProfile.Profile()
    TIMER.reset()
    started = time.perf_counter()
    profiler.enable()
    for request_id in ids:
        outcome = services.promotion_apply(request_id=request_id)
        if outcome != "applied":
            raise RuntimeError(f"request #{request_id}: {outcome}")
    profiler.disable()
    seconds = time.perf_counter() - started
    samples = TIMER.reset()
    text = io.StringIO()
    stats = pstats.Stats(profiler, stream=text)
    stats.sort_stats("cumulative").print_stats(r"(promotions|registry_sync)/", 25)
    return Breakdown(len(ids), seconds, samples, bare_samples, bare.seconds, construct_ms, text.getvalue())


# --- report --------------------------------------------------------------------------------------


def verdict(ok: bool) -> str:
    return "yes" if ok else "NO"


def print_report(
    ctx: Context, results: list[SizeResult], latency: Latency | None, breakdown: Breakdown | None
) -> None:
    print()
    print(f"MLflow server {ctx.url} (--workers 4, SQLite store); broker {ctx.broker} (queue {ctx.queue})")
    print(f"database {ctx.database_url}; at the start {ctx.load_at_start}")
    print()
    print(
        "| size | promotions | (a) bare serial s | (b) ours c=1 s | b/a "
        "| (c) bare 8 threads s | (c) ours c=8 s | c throughput vs bare |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in results:
        ratio_b = r.b.seconds / r.a.seconds
        ratio_c = r.c_bare.seconds / r.c_ours.seconds
        print(
            f"| {r.size.label} | {r.size.promotions} | {r.a.seconds:.2f} | {r.b.seconds:.2f} | {ratio_b:.2f} "
            f"| {r.c_bare.seconds:.2f} | {r.c_ours.seconds:.2f} | {ratio_c:.2f} |"
        )
    print()
    print("Time per promotion (ms) — flat across sizes means the cost is O(models x stages):")
    print("| size | (a) | (b) | (c) bare | (c) ours | MLflow calls/promotion a / b / c bare / c ours |")
    print("| --- | ---: | ---: | ---: | ---: | --- |")
    for r in results:
        calls = " / ".join(f"{p.calls_per_promotion:.2f}" for p in (r.a, r.b, r.c_bare, r.c_ours))
        print(
            f"| {r.size.label} | {r.a.per_promotion_ms:.0f} | {r.b.per_promotion_ms:.0f} "
            f"| {r.c_bare.per_promotion_ms:.0f} | {r.c_ours.per_promotion_ms:.0f} | {calls} |"
        )
    print()
    for r in results:
        print(
            f"{r.size.label}: populate {r.populate_s:.1f} s, sync {r.sync_s:.1f} s, "
            f"file+approve {2 * r.size.promotions} requests {r.file_s:.1f} s"
        )
        for phase in (r.a, r.b, r.c_bare, r.c_ours):
            print(f"  {phase.label}: {phase.seconds:.2f} s; {phase.notes}")
    largest = results[-1]
    ratio_b = largest.b.seconds / largest.a.seconds
    ratio_c = largest.c_bare.seconds / largest.c_ours.seconds
    print()
    print(f"Largest size {largest.size.label}:")
    print(f"  b/a = {ratio_b:.2f} (target <= {TARGET_B}: {verdict(ratio_b <= TARGET_B)})")
    print(
        f"  c throughput = {ratio_c:.2f} of the threaded bare client "
        f"(target >= {TARGET_C}: {verdict(ratio_c >= TARGET_C)})"
    )
    print()
    print(f"MLflow calls by endpoint at {largest.size.label} (server access log), per promotion:")
    print("(GET registered-models/get is MlflowClient's own prompt check before every registry write)")
    endpoints = sorted(
        set().union(*(p.calls for p in (largest.a, largest.b, largest.c_bare, largest.c_ours)))
    )
    print("| endpoint | (a) | (b) | (c) bare | (c) ours |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for endpoint in endpoints:
        row = " | ".join(
            f"{p.calls[endpoint] / p.promotions:.2f}"
            for p in (largest.a, largest.b, largest.c_bare, largest.c_ours)
        )
        print(f"| {endpoint} | {row} |")
    print_cpu(largest)
    if latency:
        print()
        print(
            f"Approval commit -> applied ({latency.promotions} requests, one approved every "
            f"{latency.interval:.2f} s, worker concurrency 8, broker {ctx.broker.split(':')[0]}): "
            f"p50 {percentile(latency.seconds, 0.50):.2f} s, p95 {percentile(latency.seconds, 0.95):.2f} s, "
            f"max {max(latency.seconds):.2f} s; {latency.notes}"
        )
    if breakdown:
        print_breakdown(breakdown)


def print_cpu(result: SizeResult) -> None:
    phases = (result.a, result.b, result.c_bare, result.c_ours)
    if not all(phase.cpu for phase in phases):
        return
    print()
    print(
        f"CPU time per promotion at {result.size.label} "
        f"(ms; the machine has {os.cpu_count()} cores for all of it):"
    )
    print(
        "| phase | wall | MLflow server CPU "
        "| client CPU (bare: this process; ours: the worker) | this process |"
    )
    print("| --- | ---: | ---: | ---: | ---: |")
    for phase in phases:
        n = phase.promotions
        client = phase.cpu.get("worker", phase.cpu["this process"])
        mine = "-" if "worker" not in phase.cpu else f"{1000 * phase.cpu['this process'] / n:.0f}"
        print(
            f"| {phase.label} | {phase.per_promotion_ms:.0f} | {1000 * phase.cpu['MLflow server'] / n:.0f} "
            f"| {1000 * client / n:.0f} | {mine} |"
        )


def print_breakdown(b: Breakdown) -> None:
    n = b.promotions
    in_mlflow = sum(sum(v) for v in b.samples.values())
    bare_n = n  # same models x stages
    bare_total = sum(sum(v) for v in b.bare_samples.values())
    print()
    print(f"In-process breakdown: {n} promotions through promotions.services.promotion_apply, serially")
    print(
        f"  total {1000 * b.seconds / n:.0f} ms per promotion, "
        f"of which MLflow calls {1000 * in_mlflow / n:.0f} ms"
    )
    print(
        "  everything else (SQL, audit chain, Python, MlflowClient construction) "
        f"{1000 * (b.seconds - in_mlflow) / n:.0f} ms"
    )
    print(f"  gateway._client() builds a new MlflowClient per call: {b.client_construct_ms:.2f} ms each")
    print(
        f"  bare client on an identical set: {1000 * b.bare_seconds / bare_n:.0f} ms per promotion, "
        f"of which MLflow calls {1000 * bare_total / bare_n:.0f} ms (ratio {b.seconds / b.bare_seconds:.2f})"
    )
    print(
        "| endpoint | ours calls/promotion | ours ms/call | ours ms/promotion "
        "| bare calls/promotion | bare ms/call |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for key in sorted(set(b.samples) | set(b.bare_samples)):
        ours, bare = b.samples.get(key, []), b.bare_samples.get(key, [])
        print(
            f"| {key} | {len(ours) / n:.2f} | {fmt_ms(ours)} | {1000 * sum(ours) / n:.0f} "
            f"| {len(bare) / bare_n:.2f} | {fmt_ms(bare)} |"
        )
    print()
    print("cProfile of the in-process apply (our functions, cumulative):")
    print(b.profile_text)


def fmt_ms(samples: list[float]) -> str:
    return f"{1000 * sum(samples) / len(samples):.0f}" if samples else "-"


# --- main ----------------------------------------------------------------------------------------


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default=DEFAULT_SIZES, help="MODELSxSTAGES,... (stages 1-3)")
    parser.add_argument("--broker", help=f"Celery broker URL (default {DEFAULT_REDIS} if it answers)")
    parser.add_argument("--database-url", help="default: a throwaway SQLite file in the temp dir")
    parser.add_argument("--latency-models", type=int, default=10, help="models in the latency run (0: skip)")
    parser.add_argument(
        "--latency-interval",
        type=float,
        help="seconds between approvals (default: twice the concurrency-8 time per promotion measured "
        "at the largest size, i.e. approvals arrive at about half the worker's capacity)",
    )
    parser.add_argument("--profile-models", type=int, default=5, help="models in the breakdown (0: skip)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory (logs)")
    args = parser.parse_args()
    sizes = parse_sizes(args.sizes)
    max_stages = max(size.stages for size in sizes)

    # SIGTERM (e.g. `kill`) unwinds like Ctrl-C, so every finally below stops its processes.
    signal.signal(signal.SIGTERM, _interrupt)
    os.environ["PYTHONUNBUFFERED"] = "1"  # the MLflow server's access log, line by line
    tmp = Path(tempfile.mkdtemp(prefix="bench-apply-"))
    run_id = uuid.uuid4().hex[:6]
    started = time.perf_counter()
    ctx: Context | None = None
    try:
        log(f"starting MLflow in {tmp}")
        with mlflow_server(tmp / "mlflow", workers=4) as url:
            log(f"MLflow at {url} after {time.perf_counter() - started:.1f} s")
            broker = choose_broker(args.broker, tmp)
            database_url = args.database_url or f"sqlite:///{tmp / 'bench.sqlite3'}"
            queue = f"bench-apply-{run_id}"
            log(f"broker: {broker}; database: {database_url}")
            setup_django_with_own_queue(
                tmp=tmp, database_url=database_url, broker=broker, mlflow_url=url, queue=queue
            )
            TIMER.install()
            experiment_id = new_client(url).create_experiment(f"bench-apply-{run_id}")
            ctx = Context(url, tmp, run_id, queue, broker, database_url, experiment_id, load_at_start=load())
            ensure_catalog(ctx)
            server = ServerLog(tmp / "mlflow" / "mlflow.log")
            results = [run_size(ctx, size, server) for size in sizes]
            latency = (
                run_latency(
                    ctx, args.latency_models, max_stages, args.latency_interval or half_capacity(results)
                )
                if args.latency_models
                else None
            )
            breakdown = (
                run_breakdown(ctx, args.profile_models, max_stages, server) if args.profile_models else None
            )
            print_report(ctx, results, latency, breakdown)
            print(f"\nwhole run: {fmt_seconds(time.perf_counter() - started)} s; at the end {load()}")
    finally:
        if ctx is not None:
            delete_queue(ctx)
        if args.keep:
            log(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
