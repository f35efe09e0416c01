"""Memory that must not grow with settings: writer memory and object-store bytes on Ray.

    python bench/scale_memory.py [--videos 16] [--frames 250] [--long-minutes 30]

Builds the same input with --shard-size 1GB and --shard-size 64MB (one unit of every video:
--shard-samples 1000), then one long video, on a local Ray with 2 CPUs, DIS flow. While each
build runs, a sampler reads every 0.1 s: the Ray object store's used bytes (all nodes, from
the raylet) and the memory of each Ray worker process that writes shards (the writer actors,
`UnitAssembler`; `_write_unit` tasks in builds before them): peak private memory (RssAnon)
and peak resident memory (VmHWM, which also counts object-store pages a process mapped).
Figures are peaks over the whole build.
"""
from __future__ import annotations

import argparse
import logging
import os
import platform
import shutil
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

from pipeline.synthetic import motion  # noqa: E402
from pipeline.build.config import BuildConfig, ShardConfig  # noqa: E402
from pipeline.build.run import build_dataset  # noqa: E402
from pipeline.decode import DecodeConfig  # noqa: E402
from pipeline.flow.config import FlowConfig  # noqa: E402
from pipeline.cluster.executor import RayExecutor  # noqa: E402
from pipeline.stages.config import SampleConfig, WorkerConfig  # noqa: E402

WRITER_TITLES = ("UnitAssembler", "_write_unit")
MB = 1 << 20


def _proc_kb(pid: str, field: str) -> int:
    """A field of /proc/PID/status in kB (0 once the process is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def _titles() -> dict[str, str]:
    out = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            out[pid] = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
        except OSError:
            continue
    return out


class Sampler:
    """Peak object-store bytes and the peak memory of every process seen writing shards."""

    def __init__(self, interval: float = 0.1) -> None:
        import ray
        from ray._private import internal_api

        self.state = internal_api.get_state_from_address(ray.get_runtime_context().gcs_address)
        self.store_peak = 0
        self.writers: dict[str, list[int]] = {}  # pid -> [peak RssAnon kB, VmHWM kB]
        self.interval, self.stop = interval, threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _store_bytes(self) -> int:
        from ray._private import internal_api

        return int(internal_api.get_memory_info_reply(self.state).store_stats.object_store_bytes_used)

    def _run(self) -> None:
        while not self.stop.is_set():
            self.store_peak = max(self.store_peak, self._store_bytes())
            for pid, title in _titles().items():
                if any(w in title for w in WRITER_TITLES) or pid in self.writers:
                    peak = self.writers.setdefault(pid, [0, 0])
                    peak[0] = max(peak[0], _proc_kb(pid, "RssAnon"))
                    peak[1] = max(peak[1], _proc_kb(pid, "VmHWM"))
            self.stop.wait(self.interval)

    def __enter__(self) -> "Sampler":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join()

    def writer_peaks_mb(self) -> tuple[float, float]:
        """(peak private MB, peak resident MB) over the writer processes."""
        if not self.writers:
            return 0.0, 0.0
        return max(a for a, _ in self.writers.values()) / 1024, max(h for _, h in self.writers.values()) / 1024


def build_once(root: Path, shard_bytes: int, cfg: WorkerConfig) -> dict:
    """One build on a fresh local Ray (2 CPUs), sampled while it runs."""
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    out = Path(tempfile.mkdtemp(prefix="fs-bench-mem-"))
    try:
        build = BuildConfig(worker=cfg, shard=ShardConfig(max_bytes=shard_bytes, max_samples=1000))
        with Sampler() as sampler:
            t0 = time.perf_counter()
            summary = build_dataset(str(root), str(out), build, executor=RayExecutor(), progress=False)
            seconds = time.perf_counter() - t0
        private, resident = sampler.writer_peaks_mb()
        return {"videos": summary.ok, "frames": summary.frames, "shards": summary.shards,
                "bytes": summary.bytes, "store_mb": sampler.store_peak / MB, "writer_private_mb": private,
                "writer_rss_mb": resident, "seconds": seconds}
    finally:
        ray.shutdown()
        shutil.rmtree(out, ignore_errors=True)


def make_videos(root: Path, count: int, frames: int, size: tuple[int, int]) -> Path:
    motions = ("left", "right", "up", "down")
    for i in range(count):
        m = motions[i % 4]
        (root / m).mkdir(parents=True, exist_ok=True)
        motion.write_video(root / m / f"v{i:03d}.mp4", motion.moving_frames(m, frames, size[1], size[0], seed=i))
    return root


def row(label: str, r: dict) -> str:
    return (f"| {label} | {r['videos']} | {r['frames']} | {r['shards']} | {r['bytes'] / MB:.0f} | {r['store_mb']:.1f} "
            f"| {r['writer_private_mb']:.0f} | {r['writer_rss_mb']:.0f} | {r['seconds']:.0f} |")


def compare_shard_sizes(root: Path, cfg: WorkerConfig) -> None:
    results = {}
    for label, shard_bytes in (("--shard-size 1GB", 10 ** 9), ("--shard-size 64MB", 64 * 10 ** 6)):
        results[label] = build_once(root, shard_bytes, cfg)
        print(row(label, results[label]), flush=True)
    a, b = results.values()
    print(f"\n1GB / 64MB: object store {a['store_mb'] / b['store_mb']:.2f}x, writer private memory "
          f"{a['writer_private_mb'] / b['writer_private_mb']:.2f}x, writer RSS "
          f"{a['writer_rss_mb'] / b['writer_rss_mb']:.2f}x")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--videos", type=int, default=16, help="0 skips the shard-size comparison")
    ap.add_argument("--frames", type=int, default=250)
    ap.add_argument("--size", default="320x240", help="WxH of the short videos")
    ap.add_argument("--long-minutes", type=float, default=30.0, help="0 skips the long video")
    ap.add_argument("--long-size", default="128x96", help="WxH of the long video")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    size = tuple(int(x) for x in args.size.split("x"))
    tmp = Path(tempfile.mkdtemp(prefix="fs-bench-mem-videos-"))
    cfg = WorkerConfig(decode=DecodeConfig(resize="none", threads=1), flow=FlowConfig(algorithm="dis"),
                       sample=SampleConfig(max_frames=1500))
    try:
        print(f"machine: {platform.machine()}, {os.cpu_count()} cores; local Ray with 2 CPUs; DIS flow; "
              f"{args.videos} videos x {args.frames} frames at {args.size}, one unit (--shard-samples 1000)")
        print("| build | videos | frames | shards | output MB | peak object store MB | peak writer private MB "
              "| peak writer RSS MB | seconds |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|")
        if args.videos:
            compare_shard_sizes(make_videos(tmp / "videos", args.videos, args.frames, size), cfg)
        if args.long_minutes:
            long_size = tuple(int(x) for x in args.long_size.split("x"))
            frames = int(args.long_minutes * 60 * 25)
            long_root = tmp / "long"
            (long_root / "long").mkdir(parents=True)
            motion.write_video(long_root / "long" / "long.mp4",
                                  motion.moving_frames("right", frames, long_size[1], long_size[0]), 25.0)
            r = build_once(long_root, 10 ** 9, cfg)
            print(row(f"one {args.long_minutes:g}-minute video at {args.long_size}, 25 fps", r), flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
