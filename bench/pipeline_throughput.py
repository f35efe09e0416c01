"""Whole-build throughput against bare OpenCV flow, and worker memory on a long video.

    python bench/pipeline_throughput.py [--videos 8] [--frames 120] [--long-seconds 300] [--data synthetic|mixed]

For Farneback and DIS, with 1 and 2 workers, it measures frame pairs per second
of (a) bare flow: cv2 on frames already decoded into memory, one thread, in this process,
(a') the same in `workers` processes at once (all cores busy, as during a build),
and (b) the whole build: `build_dataset` on a local Ray limited to that many CPUs (decode,
flow, JPEG encode, tar write, manifests; Ray start-up excluded). The throughput ratio is the
median over repeats of build / bare-at-once, each pair measured back to back. It also reports
CPU per pair of bare-at-once and of the build, both read machine-wide from /proc/stat (every
process counted: driver, Ray's own processes, workers and the ones Ray restarts, ffmpeg), so
run it on an otherwise idle machine: other jobs' CPU would count too. Their ratio says how much
of the build's CPU is the estimator's. Then it builds one long video and reports
the peak resident memory (VmHWM) of every Ray worker process, by the task it last ran.

Data: `synthetic` is moving textures at 340x256 (H.264); `mixed` is the photo videos of
`bench/media.py` at their native sizes, 176x144 to 1280x720 (--videos copies of the 4 sizes).
"""
from __future__ import annotations

import argparse
import logging
import os
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

import sys  # noqa: E402

import cv2  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import media  # noqa: E402
from framework_tax import machine_cpu  # noqa: E402

from pipeline import decode
from pipeline.synthetic import motion as synthetic  # noqa: E402
from pipeline.build.config import BuildConfig, ShardConfig  # noqa: E402
from pipeline.build.run import build_dataset  # noqa: E402
from pipeline.decode import DecodeConfig  # noqa: E402
from pipeline.flow.config import FlowConfig  # noqa: E402
from pipeline.flow.estimators import make_estimator  # noqa: E402
from pipeline.cluster.executor import RayExecutor  # noqa: E402
from pipeline.cluster.startup import RayConfig, init_ray  # noqa: E402
from pipeline.stages.config import SampleConfig, WorkerConfig  # noqa: E402

log = logging.getLogger("bench")
SIZE = (340, 256)


def make_videos(root: Path, count: int, frames: int) -> Path:
    motions = ("left", "right", "up", "down")
    for i in range(count):
        m = motions[i % 4]
        (root / m).mkdir(parents=True, exist_ok=True)
        synthetic.write_video(root / m / f"v{i:03d}.mp4", synthetic.moving_frames(m, frames, SIZE[1], SIZE[0], seed=i))
    return root


def video_paths(root: Path) -> list[str]:
    return sorted(str(p) for p in root.glob("*/*.*"))


def lumas(path: str) -> np.ndarray:
    """The flow input of every frame of a video, decoded as the build decodes it."""
    return np.stack([decode.split_planes(f)[0] for f, _ in decode.iter_planes(path, DecodeConfig(resize="none"))])


def bare_rate(root: Path, algo: str) -> tuple[float, float]:
    """(pairs/s, CPU ms per pair) of the estimator alone on pre-decoded grey frames (one thread)."""
    est = make_estimator(FlowConfig(algorithm=algo))
    greys = [lumas(p) for p in video_paths(root)]
    t0, c0 = time.perf_counter(), time.process_time()
    pairs = 0
    for g in greys:
        for i in range(len(g) - 1):
            est(g[i:i + 1], g[i + 1:i + 2])
            pairs += 1
    return pairs / (time.perf_counter() - t0), (time.process_time() - c0) / pairs * 1000


def _bare_worker(args: tuple[str, list[str]]) -> int:
    algo, paths = args
    cv2.setNumThreads(1)
    est = make_estimator(FlowConfig(algorithm=algo))
    greys = [lumas(p) for p in paths]
    barrier.wait()  # decode first, then every process starts flow at the same moment
    pairs = 0
    for g in greys:
        for i in range(len(g) - 1):
            est(g[i:i + 1], g[i + 1:i + 2])
            pairs += 1
    return pairs


def _init(b) -> None:
    global barrier
    barrier = b


def bare_parallel_rate(root: Path, algo: str, workers: int) -> tuple[float, float]:
    """(pairs/s, machine CPU ms per pair) of the estimator alone in `workers` processes at once (every core busy, as in a
    build: a lone busy core may run at a higher clock than all cores together)."""
    import multiprocessing as mp

    paths = video_paths(root)
    ctx = mp.get_context("spawn")
    b = ctx.Barrier(workers + 1)
    with ctx.Pool(workers, initializer=_init, initargs=(b,)) as pool:
        result = pool.map_async(_bare_worker, [(algo, paths[i::workers]) for i in range(workers)])
        b.wait()
        c0, t0 = machine_cpu(), time.perf_counter()
        pairs = sum(result.get())
        return pairs / (time.perf_counter() - t0), (machine_cpu() - c0) / pairs * 1000


def build_rate(root: Path, algo: str, workers: int) -> tuple[float, float]:
    """(pairs/s, CPU ms per pair) of a whole build on a local Ray with `workers` CPUs (Ray
    start-up excluded). The CPU is the whole machine's during the build (`machine_cpu`)."""
    import ray

    init_ray(RayConfig(num_cpus=workers))  # the build's own local Ray, as the CLI starts it
    try:
        out = Path(tempfile.mkdtemp(prefix="fs-bench-"))
        cfg = BuildConfig(worker=WorkerConfig(decode=DecodeConfig(resize="none", threads=1),
                                              flow=FlowConfig(algorithm=algo)),
                          shard=ShardConfig(max_samples=4))
        c0, t0 = machine_cpu(), time.perf_counter()
        summary = build_dataset(str(root), str(out), cfg, executor=RayExecutor(), progress=False)
        rate = summary.flow_fields / (time.perf_counter() - t0)
        cpu = (machine_cpu() - c0) / summary.flow_fields * 1000
        shutil.rmtree(out)
        return rate, cpu
    finally:
        ray.shutdown()


class WorkerSampler:
    """Samples Ray worker processes while a build runs: the task titles each process showed
    (workers are reused across tasks) and, at the end, its peak resident memory (VmHWM)."""

    def __init__(self, interval: float = 0.1) -> None:
        import threading

        self.titles: dict[str, set[str]] = {}
        self.anon: dict[str, int] = {}
        self.interval, self.stop = interval, threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.stop.is_set():
            for pid, title in _ray_processes():
                if title not in ("ray::IDLE",):
                    self.titles.setdefault(pid, set()).add(title.split(" ")[0])
                # RssAnon: the process's own memory. VmHWM also counts object-store pages it
                # mapped while reading chunks, which belong to the shared store, not to it.
                self.anon[pid] = max(self.anon.get(pid, 0), _status_kb(pid, "RssAnon"))
            self.stop.wait(self.interval)

    def __enter__(self) -> "WorkerSampler":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join()

    def peaks_mb(self) -> list[tuple[str, float, float]]:
        """(tasks seen, peak private MB, peak RSS MB incl. mapped object-store pages) per worker."""
        rows = []
        for pid, titles in self.titles.items():
            tasks = sorted(t for t in titles if t.startswith("ray::_") or "FlowActor" in t)
            if tasks:
                rows.append((", ".join(tasks), self.anon.get(pid, 0) / 1024, _status_kb(pid, "VmHWM") / 1024))
        return sorted(rows)


def _ray_processes():
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            title = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
        except OSError:
            continue
        if title.startswith("ray::"):
            yield pid, title


def _status_kb(pid: str, field: str) -> int:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    return next((int(line.split()[1]) for line in status.splitlines() if line.startswith(field + ":")), 0)


def long_video_memory(root: Path, seconds: int) -> tuple[int, list[tuple[str, float, float]]]:
    """Build one long video with DIS (fast) and read the worker peaks before Ray stops."""
    import ray

    video = root / "long" / "long.mp4"
    video.parent.mkdir(parents=True)
    synthetic.write_video(video, synthetic.moving_frames("right", seconds * 25, SIZE[1], SIZE[0]), 25.0)
    init_ray(RayConfig(num_cpus=2))
    try:
        out = Path(tempfile.mkdtemp(prefix="fs-bench-long-"))
        cfg = BuildConfig(worker=WorkerConfig(decode=DecodeConfig(resize="none", threads=1), flow=FlowConfig(algorithm="dis"),
                                              sample=SampleConfig(max_frames=1500)))
        with WorkerSampler() as sampler:
            summary = build_dataset(str(root), str(out), cfg, executor=RayExecutor(), progress=False)
            peaks = sampler.peaks_mb()
        shutil.rmtree(out)
        return summary.frames, peaks
    finally:
        ray.shutdown()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--videos", type=int, default=8)
    ap.add_argument("--frames", type=int, default=120)
    ap.add_argument("--data", default="synthetic", choices=["synthetic", "mixed"])
    ap.add_argument("--long-seconds", type=int, default=300, help="0 skips the memory run")
    ap.add_argument("--algos", default="farneback,dis")
    ap.add_argument("--workers", default="1,2", help="worker counts to measure")
    ap.add_argument("--repeat", type=int, default=3, help="runs per figure; the median is reported")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    tmp = Path(tempfile.mkdtemp(prefix="fs-bench-videos-"))
    if args.data == "mixed":
        media.write_mixed(tmp / "videos", args.frames, copies=args.videos)
        root, what = tmp / "videos", f"{args.videos} x {len(media.MIXED)} photo videos (176x144 to 1280x720)"
    else:
        root, what = make_videos(tmp / "videos", args.videos, args.frames), f"{args.videos} videos at {SIZE[0]}x{SIZE[1]}"
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}; "
          f"{what} x {args.frames} frames; median of {args.repeat} runs")
    print("| flow | workers | bare, 1 process | bare, `workers` processes at once | whole build "
          "| build / bare at once | CPU ms/pair, bare at once | CPU ms/pair, build | bare CPU / build CPU |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for algo in args.algos.split(","):
        rate1 = statistics.median(bare_rate(root, algo)[0] for _ in range(args.repeat))
        for workers in map(int, args.workers.split(",")):
            # Side by side: each repeat measures bare-at-once and the build back to back, so a
            # change in the machine's load moves both.
            runs = [(bare_parallel_rate(root, algo, workers), build_rate(root, algo, workers))
                    for _ in range(args.repeat)]
            together = statistics.median(t for (t, _), _ in runs)
            rate = statistics.median(b for _, (b, _) in runs)
            ratio = statistics.median(b / t for (t, _), (b, _) in runs)
            cpu_bare = statistics.median(c for (_, c), _ in runs)
            cpu = statistics.median(c for _, (_, c) in runs)
            print(f"| {algo} | {workers} | {rate1:.1f} | {together:.1f} | {rate:.1f} | {ratio:.0%} "
                  f"| {cpu_bare:.2f} | {cpu:.2f} | {cpu_bare / cpu:.0%} |", flush=True)
    if args.long_seconds:
        print("\n| video | frames | Ray worker process (tasks it ran) | peak private MB (RssAnon) "
              "| peak RSS MB (VmHWM) |\n|---|---:|---|---:|---:|")
        for seconds in (max(1, args.long_seconds // 10), args.long_seconds):
            frames, peaks = long_video_memory(tmp / f"long_root_{seconds}", seconds)
            for tasks, anon, hwm in peaks:
                print(f"| {seconds} s at 25 fps | {frames} | {tasks} | {anon:.0f} | {hwm:.0f} |", flush=True)
    shutil.rmtree(tmp)


if __name__ == "__main__":
    main()
