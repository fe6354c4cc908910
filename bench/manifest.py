"""Benchmark: the artifact manifest against sha256sum of the same files on disk.

Starts its own MLflow server (SQLite store, local artifact destination, in a temporary
directory), logs --gb of model files (--files of them, plus a small MLmodel) as one run's model
artifacts, registers them as a model version, then times in the same run:

  (a)  `sha256sum` over the files where the server keeps them on disk: the physical limit here;
  (b)  `gateway.artifact_manifest(name, 1)` as the worker calls it: through the MLflow server
       (`mlflow-artifacts:`, each file streamed over HTTP and hashed as it arrives). MLflow 3.17's
       server refuses a `file://` version source, so a served local store is the local case.

Each is run --rounds times with the page cache warm (the first sha256sum warms it); the best
round counts. (b) runs in a child process, which prints its peak resident memory
(VmHWM) before and after the manifest: the growth must stay flat whatever the model's size.
Targets: throughput of (b) >= 0.7 of (a); memory growth <= 50 MB for a 2 GB model.

    .venv/bin/python bench/manifest.py            # 1 GB in 8 files
    .venv/bin/python bench/manifest.py --gb 2 --files 4
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
# MLflow's telemetry thread edits os.environ while requests reads it: no telemetry, no race.
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

from bench.common import mlflow_server, setup_django  # noqa: E402

MIB = 1024 * 1024


def vm_hwm_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise RuntimeError("no VmHWM in /proc/self/status")


def write_model_files(folder: Path, *, total_bytes: int, files: int) -> list[Path]:
    """`files` files of random bytes (one random MiB repeated: hashing cares for nothing else)."""
    folder.mkdir(parents=True)
    block = os.urandom(MIB)
    paths = []
    per_file = total_bytes // files
    for index in range(files):
        path = folder / f"weights-{index:02d}.bin"
        with path.open("wb") as handle:
            for _ in range(per_file // MIB):
                handle.write(block)
        paths.append(path)
    (folder / "MLmodel").write_text("flavors:\n  python_function:\n    loader_module: bench\n")
    return paths + [folder / "MLmodel"]


def time_sha256sum(paths: list[Path]) -> float:
    started = time.perf_counter()
    subprocess.run(["sha256sum", *map(str, paths)], check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - started


def child(workdir: Path, url: str, name: str, rounds: int) -> None:
    """In a fresh process: VmHWM, then the manifest `rounds` times, then VmHWM again (JSON out)."""
    setup_django(workdir, mlflow_url=url, migrate=False)
    from registry_sync import gateway

    gateway.artifact_manifest(name, 1, mode="quick", small_file_bytes=0)  # imports, connections
    before = vm_hwm_kib()
    timings, manifest = [], None
    for _ in range(rounds):
        started = time.perf_counter()
        manifest = gateway.artifact_manifest(name, 1)
        timings.append(time.perf_counter() - started)
    after = vm_hwm_kib()
    print(
        json.dumps(
            {
                "seconds": timings,
                "hwm_before_kib": before,
                "hwm_after_kib": after,
                "files": len(manifest.files),
                "bytes": manifest.total_bytes,
                "digest": manifest.digest,
                "hashes": {f.path: f.sha256 for f in manifest.files},
            }
        )
    )


def measure_in_child(workdir: Path, url: str, name: str, rounds: int) -> dict:
    output = subprocess.run(
        [sys.executable, __file__, "--child", str(workdir), url, name, str(rounds)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return json.loads(output.strip().splitlines()[-1])


def register(url: str, name: str, source: str, run_id: str) -> None:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=url, registry_uri=url)
    client.create_registered_model(name)
    client.create_model_version(name, source, run_id=run_id)


def report(label: str, result: dict, disk_seconds: float, total: int) -> None:
    best = min(result["seconds"])
    gb = total / 1024**3
    growth_mb = (result["hwm_after_kib"] - result["hwm_before_kib"]) / 1024
    ratio = disk_seconds / best
    print(
        f"{label:<34} {best:7.2f} s  {gb / best:6.2f} GB/s  {best / gb:6.2f} s/GB  "
        f"ratio {ratio:4.2f} ({'ok' if ratio >= 0.7 else 'below'} target 0.7)  "
        f"peak RSS growth {growth_mb:5.1f} MB ({'ok' if growth_mb <= 50 else 'over'} 50 MB)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gb", type=float, default=1.0, help="total size of the model files (default 1)")
    parser.add_argument("--files", type=int, default=8, help="how many large files (default 8)")
    parser.add_argument("--rounds", type=int, default=2, help="timed rounds of each (default 2)")
    args = parser.parse_args()
    total = int(args.gb * 1024**3) // args.files // MIB * MIB * args.files

    tmp = Path(tempfile.mkdtemp(prefix="bench-manifest-"))
    try:
        with mlflow_server(tmp / "mlflow") as url:
            from mlflow import MlflowClient

            client = MlflowClient(tracking_uri=url)
            print(f"writing {total / 1024**3:.2f} GB in {args.files} files + MLmodel …")
            local = write_model_files(tmp / "upload" / "model", total_bytes=total, files=args.files)
            started = time.perf_counter()
            run = client.create_run(client.create_experiment("bench-manifest"))
            client.log_artifacts(run.info.run_id, str(local[0].parent), "model")
            print(f"logged to MLflow in {time.perf_counter() - started:.1f} s")
            shutil.rmtree(tmp / "upload")
            register(url, "bench_served", f"runs:/{run.info.run_id}/model", run.info.run_id)
            run_artifacts = client.get_run(run.info.run_id).info.artifact_uri
            on_disk = (
                tmp / "mlflow" / "artifacts" / run_artifacts.removeprefix("mlflow-artifacts:/") / "model"
            )
            paths = sorted(p for p in on_disk.rglob("*") if p.is_file())
            if len(paths) != args.files + 1:
                raise SystemExit(f"found {len(paths)} files under {on_disk}, not {args.files + 1}")

            time_sha256sum(paths)  # warms the page cache, as the manifest rounds will find it
            disk = min(time_sha256sum(paths) for _ in range(args.rounds))
            served = measure_in_child(tmp / "child", url, "bench_served", args.rounds)

            expected = {
                line.split()[1].rsplit("/", 1)[-1]: line.split()[0]
                for line in subprocess.run(
                    ["sha256sum", *map(str, paths)], check=True, capture_output=True, text=True
                ).stdout.splitlines()
            }
            assert served["hashes"] == expected, "the manifest's hashes differ from sha256sum's"

            gb = total / 1024**3
            load = os.getloadavg()[0]
            print(f"\n{len(paths)} files, {served['bytes'] / 1024**3:.2f} GB; machine load {load:.2f}")
            print(
                f"{'sha256sum on disk (a)':<34} {disk:7.2f} s  {gb / disk:6.2f} GB/s  {disk / gb:6.2f} s/GB"
            )
            report("manifest via the server (b)", served, disk, total)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(Path(sys.argv[2]), sys.argv[3], sys.argv[4], int(sys.argv[5]))
    else:
        main()
