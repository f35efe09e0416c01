"""Does the driver keep up with a large cluster? The real scheduler loop on many logical CPUs.

    PYTHONPATH=. python bench/scheduler_scale.py [--cpus 64 256 1024] [--videos-per-cpu 4] [--chunks 4]

For each CPU count, a local Ray declares that many logical CPUs (`num_cpus`) and the real
`pipeline.cluster.scheduler.Scheduler` runs a build of (videos-per-cpu x CPUs, at least 2,000)
videos in units of 1,000, sized by its own rules for that many CPUs. No video is decoded: the
remote functions it calls (`tasks._video` on the fused path, the default of CPU builds;
`tasks._plan`, `_decode`, `_flow` on the split path, `--path split`) and the writer class are replaced
by no-op stand-ins served by a few actors (`--servers`), so the machine runs a handful of worker
processes instead of one per logical CPU, and each call returns at once. What remains is the
driver's own work per event: submitting, waiting, handling results, batching writer calls.

Reported per CPU count: the driver process's CPU time (`time.process_time`, Ray's threads in
the driver process included) per video, events handled per second of wall time, events per
`ray.wait`, and wall time. The targets of the scheduler: <= 5 ms of driver CPU per video at
1,024 CPUs, growing <= 1.5x from 64 to 1,024.
"""
from __future__ import annotations

import argparse
import itertools
import json
import logging
import os
import platform
import time
from collections import Counter
from dataclasses import dataclass

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

import ray  # noqa: E402

from pipeline.build.config import BuildConfig  # noqa: E402
from pipeline.build.units import Unit  # noqa: E402
from pipeline.cluster import scheduler, tasks  # noqa: E402
from pipeline.cluster.startup import RayConfig  # noqa: E402
from pipeline.records import VideoRef  # noqa: E402

log = logging.getLogger("bench.scheduler_scale")
UNIT_VIDEOS = 1000
_WAITS = [0]  # blocking ray.wait calls (num_returns=1) of the scheduler, for schedulers that do not count
_wait = ray.wait


def _counting_wait(*args, **kwargs):
    if kwargs.get("num_returns", 1) == 1 and kwargs.get("timeout") != 0:
        _WAITS[0] += 1
    return _wait(*args, **kwargs)


ray.wait = _counting_wait


@dataclass(frozen=True)
class _Summary:
    """What the driver reads of a chunk result (a `ChunkSummary` stand-in)."""

    index: int
    flow_pairs: tuple = (0,)


@ray.remote(num_cpus=0, max_concurrency=1)
class _Server:
    """Answers the scheduler's remote calls at once (no video work)."""

    def plan(self, ref, cfg, chunks):
        return ("plan", chunks), ray.get_runtime_context().get_node_id(), ""

    def decode(self, ref, plan, cfg):
        for i in range(plan[1]):  # noqa: UP028 - Ray's generator tasks need a generator function's own yields
            yield i

    def flow(self, job, cfg):
        return (_Summary(index=job), "node", "node"), b"x"

    def video(self, ref, cfg, part, parts, chunks):
        yield ("plan", chunks), ray.get_runtime_context().get_node_id(), ""
        for i in range(part, chunks, parts):
            yield _Summary(index=i), "node", "node"
            yield b"x"


class _Remote:
    """A stand-in for a remote function: `.options(...)` is ignored, `.remote(...)` goes to the
    next server's method (round robin)."""

    def __init__(self, servers: list, method: str, extra: tuple = (), **call_options) -> None:
        self.servers, self.method, self.extra, self.call_options = servers, method, extra, call_options
        self.turn = itertools.cycle(range(len(servers)))

    def options(self, **_):
        return self

    def remote(self, *args):
        fn = getattr(self.servers[next(self.turn)], self.method)
        if self.call_options:
            fn = fn.options(**self.call_options)
        return fn.remote(*args, *self.extra)


class _Writer:
    """A writer that keeps nothing: the driver's calls, none of the disk work."""

    def __init__(self, tag: str = "") -> None:
        self.name = ""

    def begin(self, unit, output, cfg) -> str:
        self.name = unit.name
        return "spool"

    def take(self, chunks, outcomes, *payloads) -> int:
        return 0

    # The per-call writer API of earlier schedulers, so the bench also runs against them
    # (PYTHONPATH=<an older checkout>) for a side-by-side baseline.
    def chunk(self, key, attempt, chunk) -> None:
        return None

    def video(self, key, attempt, outcome) -> int:
        return 0

    def finish(self) -> dict:
        return {"unit": self.name}

    def finish_in_background(self) -> None:
        return None

    def committed(self, name: str) -> dict:
        return {"unit": name}

    def abort(self) -> None:
        return None

    def peak_rss(self) -> int:
        return 0


class _Progress:
    def __init__(self) -> None:
        self.videos = self.errors = 0

    def video_done(self, res) -> None:
        self.videos += 1
        self.errors += res.status != "ok"


def _units(videos: int) -> list[Unit]:
    refs = [VideoRef(key=f"v{i:07d}", uri=f"/nowhere/v{i}.mp4", source=f"v{i}.mp4", label="a", label_id=0)
            for i in range(videos)]
    return [Unit(name=f"u{k:05d}", split="train", refs=tuple(refs[k:k + UNIT_VIDEOS]), stem=f"u{k:05d}")
            for k in range(0, videos, UNIT_VIDEOS)]


def run_one(cpus: int, videos: int, chunks: int, servers: int, path: str = "fused") -> dict:
    """One build of `videos` no-op videos on a local Ray declaring `cpus` logical CPUs."""
    ray.init(address="local", num_cpus=cpus, include_dashboard=False, log_to_driver=False,
             object_store_memory=512 << 20,
             # Ray would start a worker process per free CPU; only the few actors below run.
             _system_config={"enable_worker_prestart": False, "num_workers_soft_limit": servers + 8})
    try:
        pool = [_Server.remote() for _ in range(servers)]
        ray.get([s.plan.remote(None, None, 0) for s in pool])  # started before the clock
        originals = (tasks._plan, tasks._decode, tasks._flow, tasks._video, scheduler.UnitAssembler)
        tasks._video = _Remote(pool, "video", extra=(chunks,), num_returns="streaming")
        tasks._plan = _Remote(pool, "plan", extra=(chunks,))
        tasks._decode = _Remote(pool, "decode", num_returns="streaming")
        tasks._flow = _Remote(pool, "flow", num_returns=2)
        scheduler.UnitAssembler = _Writer
        _WAITS[0] = 0
        try:
            # The object store of this machine is no cluster's: chunks in flight follow the CPUs
            # as on a cluster whose store holds them (3 x CPUs, the scheduler's rule).
            progress = _Progress()
            ctx = scheduler.RunContext(ray_cfg=RayConfig(max_chunks=3 * cpus, fused=path == "fused"), cfg=BuildConfig(), output="/nowhere",
                                       done=lambda unit, rec: None, progress=progress,
                                       placement={"decode": Counter(), "flow": Counter()}, stats={})
            sched = scheduler.Scheduler(ctx)
            cpu0, wall0 = time.process_time(), time.perf_counter()
            sched.run(_units(videos))
            cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
            if progress.errors or progress.videos != videos:
                raise RuntimeError(f"{progress.errors} of {progress.videos} no-op videos failed: the stand-ins are broken")
        finally:
            tasks._plan, tasks._decode, tasks._flow, tasks._video, scheduler.UnitAssembler = originals
        s = ctx.stats
        # A scheduler without event counts (an earlier one) handled one event per wait: it counts
        # its waits through the patched ray.wait.
        events, waits = s.get("events", _WAITS[0]), s.get("waits", _WAITS[0])
        return {"cpus": cpus, "videos": videos, "chunks_per_video": chunks, "max_videos": s.get("max_videos", 0),
                "max_chunks": s.get("max_chunks", 3 * cpus),
                "driver_cpu_ms_per_video": round(1000 * cpu / videos, 3), "events": events,
                "events_per_s": round(events / wall, 1), "events_per_video": round(events / videos, 2),
                "events_per_wait": round(events / max(waits, 1), 2), "wall_s": round(wall, 2)}
    finally:
        ray.shutdown()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cpus", type=int, nargs="+", default=[64, 256, 1024])
    p.add_argument("--videos-per-cpu", type=float, default=4.0)
    p.add_argument("--min-videos", type=int, default=2000)
    p.add_argument("--chunks", type=int, default=4, help="chunks per video (a 10 s clip at 25 fps: 4 of 64 frames)")
    p.add_argument("--servers", type=int, default=4, help="actors answering the no-op calls")
    p.add_argument("--path", choices=["fused", "split"], default="fused",
                   help="the CPU build's path a video takes: one task (fused) or probe, decode and flow tasks")
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    print(f"# {platform.node()}: {os.cpu_count()} cores, ray {ray.__version__}")
    rows = []
    for cpus in args.cpus:
        videos = max(args.min_videos, int(args.videos_per_cpu * cpus))
        rows.append(run_one(cpus, videos, args.chunks, args.servers, args.path))
        print(json.dumps(rows[-1]), flush=True)
    print("| logical CPUs | videos | driver CPU per video | events/s | events per video | events per wait | wall |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['cpus']} | {r['videos']} | {r['driver_cpu_ms_per_video']:.2f} ms | {r['events_per_s']:.0f} | "
              f"{r['events_per_video']:.1f} | {r['events_per_wait']:.1f} | {r['wall_s']:.1f} s |")
    if len(rows) > 1:
        print(f"growth of driver CPU per video from {rows[0]['cpus']} to {rows[-1]['cpus']} CPUs: "
              f"{rows[-1]['driver_cpu_ms_per_video'] / rows[0]['driver_cpu_ms_per_video']:.2f}x")


if __name__ == "__main__":
    main()
