"""Benchmark: audit-log exports and verification at a million entries.

Fills a throwaway SQLite database with --events audit entries forming a valid hash chain
(bulk_create in batches, hashes from audit.compute_hash, the chain head updated at the end), then
measures, each in a fresh child process so that one measurement's memory does not hide another's:

  (a) CSV and JSON Lines export through promotions.audit.exports.write_export, the generator the web
      views and `export_audit_log` stream: rows/s, MB/s, and peak memory growth of the process,
      as tracemalloc's peak (Python allocations, in a second, untimed pass: tracing slows the
      code) and as the growth of the kernel's RSS high-water mark (VmHWM, reset just before;
      the whole process, C buffers included);
  (b) `verify_audit_log` over the database chain (audit.verify_database: worker processes
      walk parts of a log of verify.DATABASE_PARALLEL_MIN_ENTRIES or more): events/s, and for
      comparison the same walk in one process (verify-db-one-process);
  (c) `verify_audit_log --export FILE` over each exported file: events/s;

each the best of --repeat runs (3), in wall-clock time and per CPU-second (this process and its
worker processes: the figure that does not depend on what else the machine is doing).

Targets: export >= 50,000 rows/s, peak memory growth <= 50 MB, verify >= 100,000 events/s.
var/ and the developer's databases are never touched.

Run from the repository root:

    .venv/bin/python bench/export.py                  # 1,000,000 entries
    .venv/bin/python bench/export.py --events 100000
    .venv/bin/python bench/export.py --keep DIR       # keep (and next time reuse) the database in DIR
    .venv/bin/python bench/export.py --keep DIR --only verify-db,verify-db-one-process
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import tracemalloc
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import setup_django  # noqa: E402

TARGET_EXPORT_ROWS_PER_S = 50_000
TARGET_MEMORY_MB = 50
TARGET_VERIFY_PER_S = 100_000
REPEAT = 3  # each measurement is the best of this many runs (--repeat)
BATCH = 5000

ACTIONS = (
    "request.created",
    "review.approved",
    "review.approved",
    "request.approved",
    "promotion.applied",
    "review.rejected",
    "promotion.failed",
    "registry.drift",
)
PEOPLE = (("riley", "Riley Tester"), ("rex", "Rex Tester"), ("rita", "Rita Tester"), ("", "system"))
MODELS = ("sales_forecast", "churn_classifier", "fraud_detector", "demand_planner")
MOVES = (("None", "Staging"), ("Staging", "Production"), ("Production", "Archived"))


def _setup(workdir: Path, *, migrate: bool) -> None:
    # No MLflow is needed: nothing here talks to the registry.
    setup_django(workdir, mlflow_url="http://127.0.0.1:5000", migrate=migrate)


def _reset_peak_rss() -> bool:
    """Reset the kernel's high-water mark of this process's RSS (Linux >= 4.0); False if not."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _status_mb(field: str) -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return None


def _rss_mb() -> float:
    return _status_mb("VmRSS") or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _peak_rss_mb() -> float:
    """VmHWM (peak since the reset) when the kernel has it, else ru_maxrss (peak since start)."""
    return _status_mb("VmHWM") or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _cpu_seconds() -> float:
    """CPU time of this process and of its finished children (verification's worker processes)."""
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + children.ru_utime + children.ru_stime


class _Clock:
    """Wall time, and CPU time, which does not count other people's load on the machine."""

    def __enter__(self):
        self.wall, self.cpu = time.perf_counter(), _cpu_seconds()
        return self

    def __exit__(self, *exc):
        self.wall, self.cpu = time.perf_counter() - self.wall, _cpu_seconds() - self.cpu


# --- filling ----------------------------------------------------------------------------------


def fill(events: int) -> float:
    """Append `events` entries after whatever the migrations wrote; return the seconds taken."""
    from django.db import reset_queries, transaction

    from promotions import audit
    from promotions.models import AuditChainHead, AuditEvent

    started = time.perf_counter()
    head = AuditChainHead.objects.get(pk=1)
    sequence, previous = head.last_sequence, head.last_hash
    moment = datetime.now(UTC) - timedelta(weeks=26)
    step = timedelta(weeks=26) / max(events, 1)
    batch: list[AuditEvent] = []
    for i in range(events):
        sequence += 1
        moment += step
        username, name = PEOPLE[i % len(PEOPLE)]
        action = ACTIONS[i % len(ACTIONS)]
        model = MODELS[i % len(MODELS)]
        source, target = MOVES[i % len(MOVES)]
        request_id = i // 5 + 1
        details = (
            {"comment": f"looks fine, run {i}", "approvals": 1, "required": 2}
            if action.startswith("review")
            else {"reason": "checks passed", "attempts": 1}
        )
        event = AuditEvent(
            sequence=sequence,
            created_at=moment,
            actor_username=username,
            actor_name=name,
            action=action,
            model_name=model,
            version=i % 40 + 1,
            from_stage=source,
            to_stage=target,
            request_id=request_id,
            meaning=f"{action}: promote {model} v{i % 40 + 1} to {target} (request #{request_id})",
            details=details,
            prev_hash=previous,
        )
        event.hash = audit.compute_hash(audit.payload_of(event))
        previous = event.hash
        batch.append(event)
        if len(batch) == BATCH:
            with transaction.atomic():
                AuditEvent.objects.bulk_create(batch)
            batch.clear()
            reset_queries()  # DEBUG keeps every query's SQL otherwise
    if batch:
        AuditEvent.objects.bulk_create(batch)
    AuditChainHead.objects.filter(pk=1).update(last_sequence=sequence, last_hash=previous)
    return time.perf_counter() - started


# --- measurements (each runs in its own child process) ---------------------------------------


def _best(work) -> _Clock:
    """The run of `work` with the shortest wall time, of REPEAT."""
    best = None
    for _run in range(REPEAT):
        with _Clock() as clock:
            work()
        best = clock if best is None or clock.wall < best.wall else best
    return best


def measure_export(workdir: Path, fmt: str) -> dict:
    from promotions.audit import exports, filters

    cut = exports.export_cut(filters.AuditFilter())
    path = workdir / f"audit.{fmt}"
    rss_before = _rss_mb()
    peak_reset = _reset_peak_rss()
    clock = _best(lambda: exports.write_export(path, cut=cut, fmt=fmt))
    rss_growth = _peak_rss_mb() - rss_before
    # A pass under tracemalloc for the Python-side peak; it is not timed (tracing is slow).
    tracemalloc.start()
    baseline, _ = tracemalloc.get_traced_memory()
    for _block in exports.iter_export(cut, fmt=fmt):
        pass
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    rows = json.loads(exports.manifest_path(path).read_text())["rows"]
    size_mb = path.stat().st_size / 1e6
    return {
        "rows": rows,
        "seconds": clock.wall,
        "cpu_seconds": clock.cpu,
        "rows_per_s": rows / clock.wall,
        "rows_per_cpu_s": rows / clock.cpu,
        "mb": size_mb,
        "mb_per_s": size_mb / clock.wall,
        "traced_peak_mb": (peak - baseline) / 1e6,
        "rss_growth_mb": rss_growth,
        "rss_peak_since": "reset (VmHWM)" if peak_reset else "process start (ru_maxrss)",
    }


def _rates(events: int, clock: _Clock) -> dict:
    return {
        "events": events,
        "seconds": clock.wall,
        "cpu_seconds": clock.cpu,
        "events_per_s": events / clock.wall,
        "events_per_cpu_s": events / clock.cpu,
    }


def measure_verify_database(workdir: Path) -> dict:
    from django.core.management import call_command

    from promotions.models import AuditChainHead

    count = AuditChainHead.objects.get(pk=1).last_sequence
    with open(os.devnull, "w") as sink:
        return _rates(count, _best(lambda: call_command("verify_audit_log", stdout=sink)))


def measure_verify_database_one_process(workdir: Path) -> dict:
    """For comparison: the same database walk as (b), without worker processes: what one CPU
    makes of it (and what the audit page's full walk costs, which never starts workers)."""
    from promotions import audit
    from promotions.models import AuditChainHead

    count = AuditChainHead.objects.get(pk=1).last_sequence

    def walk() -> None:
        report = audit.verify_database(parallel=False)
        if not report.ok:
            raise SystemExit(f"chain broken at #{report.first_bad_sequence}: {report.reason}")

    return _rates(count, _best(walk))


def measure_verify_file(workdir: Path, fmt: str) -> dict:
    from django.core.management import call_command

    path = workdir / f"audit.{fmt}"
    rows = json.loads((workdir / f"audit.{fmt}.manifest.json").read_text())["rows"]
    with open(os.devnull, "w") as sink:
        return _rates(
            rows, _best(lambda: call_command("verify_audit_log", "--export", str(path), stdout=sink))
        )


MEASUREMENTS = {
    "export-csv": lambda d: measure_export(d, "csv"),
    "export-jsonl": lambda d: measure_export(d, "jsonl"),
    "verify-db": measure_verify_database,
    "verify-db-one-process": measure_verify_database_one_process,
    "verify-csv": lambda d: measure_verify_file(d, "csv"),
    "verify-jsonl": lambda d: measure_verify_file(d, "jsonl"),
}


def run_child(workdir: Path, name: str) -> dict:
    done = subprocess.run(
        [sys.executable, __file__, "--child", name, "--keep", str(workdir), "--repeat", str(REPEAT)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise SystemExit(f"{name} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# --- report -----------------------------------------------------------------------------------


def verdict(ok: bool) -> str:
    return "ok" if ok else "MISSED"


def main() -> None:
    global REPEAT
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument(
        "--keep", metavar="DIR", help="work in DIR and keep it (default: a temporary directory)"
    )
    parser.add_argument("--repeat", type=int, default=REPEAT, help="report the best of this many runs (3)")
    parser.add_argument(
        "--only",
        metavar="NAME,...",
        help=f"run only these measurements (of {', '.join(MEASUREMENTS)}); verify-csv and "
        "verify-jsonl need the files export-csv and export-jsonl wrote (in --keep DIR)",
    )
    parser.add_argument("--child", choices=sorted(MEASUREMENTS), help=argparse.SUPPRESS)
    args = parser.parse_args()
    REPEAT = max(1, args.repeat)
    names = list(MEASUREMENTS)
    if args.only:
        names = [name.strip() for name in args.only.split(",") if name.strip()]
        unknown = sorted(set(names) - set(MEASUREMENTS))
        if unknown:
            parser.error(f"unknown measurement {', '.join(unknown)}: choose from {', '.join(MEASUREMENTS)}")

    if args.child:
        workdir = Path(args.keep)
        _setup(workdir, migrate=False)
        print(json.dumps(MEASUREMENTS[args.child](workdir)))
        return

    workdir = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="bench-export-"))
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        _setup(workdir, migrate=True)
        from promotions.models import AuditEvent

        present = AuditEvent.objects.count()
        if present >= args.events:
            print(f"reusing the {present:,} audit entries in {workdir / 'bench.sqlite3'}", flush=True)
        else:
            print(f"filling {args.events:,} audit entries in {workdir / 'bench.sqlite3'} …", flush=True)
            fill_seconds = fill(args.events)
            print(
                f"  filled in {fill_seconds:.1f} s ({args.events / fill_seconds:,.0f} entries/s)", flush=True
            )
        results = {}
        for name in names:
            print(f"measuring {name} …", flush=True)
            results[name] = run_child(workdir, name)
            print(f"  {json.dumps(results[name])}", flush=True)
        report(args.events, results)
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)


def report(events: int, results: dict) -> None:
    print()
    print(
        f"Audit export benchmark: {events:,} entries (plus the migrations' own), SQLite, "
        f"best of {REPEAT} runs each, {_machine()}"
    )
    print(f"{'measurement':<36}{'wall clock':>18}{'CPU time':>18}  target")
    for fmt in ("csv", "jsonl"):
        if f"export-{fmt}" not in results:
            continue
        r = results[f"export-{fmt}"]
        print(
            f"{fmt.upper() + ' export (rows/s)':<36}{r['rows_per_s']:>18,.0f}{r['rows_per_cpu_s']:>18,.0f}"
            f"  >= {TARGET_EXPORT_ROWS_PER_S:,} {verdict(r['rows_per_s'] >= TARGET_EXPORT_ROWS_PER_S)}"
        )
        print(
            f"{'  size, MB/s':<36}{r['mb_per_s']:>18,.1f}{'':>18}"
            f"  ({r['mb']:,.0f} MB in {r['seconds']:.1f} s)"
        )
        growth = max(r["traced_peak_mb"], r["rss_growth_mb"])
        print(
            f"{'  memory growth, MB':<36}{'tracemalloc ' + format(r['traced_peak_mb'], '.1f'):>18}"
            f"{'RSS ' + format(r['rss_growth_mb'], '.1f'):>18}  <= {TARGET_MEMORY_MB} "
            f"{verdict(growth <= TARGET_MEMORY_MB)}"
        )
    for name, label, target in (
        ("verify-db", "verify_audit_log (events/s)", True),
        ("verify-csv", "verify_audit_log --export CSV", True),
        ("verify-jsonl", "verify_audit_log --export JSONL", True),
        ("verify-db-one-process", "  database walk, one process", False),
    ):
        if name not in results:
            continue
        r = results[name]
        verdict_text = (
            f"  >= {TARGET_VERIFY_PER_S:,} {verdict(r['events_per_s'] >= TARGET_VERIFY_PER_S)}"
            if target
            else "  (for comparison)"
        )
        print(
            f"{label:<36}{r['events_per_s']:>18,.0f}{r['events_per_cpu_s']:>18,.0f}"
            f"{verdict_text}  ({r['seconds']:.1f} s)"
        )


def _machine() -> str:
    load = os.getloadavg()
    return f"{os.cpu_count()} CPUs, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} at the end"


if __name__ == "__main__":
    main()
