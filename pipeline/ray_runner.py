"""The only module that imports Ray: it schedules the pipeline's stages, nothing more.

Per video: a small `_plan` task probes it; a `_decode` generator task streams its frames
in chunks; each chunk goes to a `_flow` CPU task (flow + encode) or, on GPU builds, to a
`FlowActor` (flow only, batched across videos) followed by an `_encode` CPU task. When
every video of a planned shard is done, a `_write_unit` task assembles and writes its tars.
Work in flight is bounded (videos decoding, chunks queued), so memory stays flat; results
are handled as they complete with `ray.wait`.
"""
from __future__ import annotations

import logging
import os
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pipeline import worker
from pipeline.units import BuildConfig, Unit, write_unit
from pipeline.flow import make_estimator
from pipeline.flow_batch import PairBatcher
from pipeline.records import VideoRef, VideoResult

log = logging.getLogger(__name__)

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # local Ray binds to loopback
import ray  # noqa: E402  (after the environment above is set)

_ESTIMATORS: dict = {}


def _estimator(flow_cfg):
    # One estimator per worker process and config: OpenCV objects are reused between tasks.
    key = repr(flow_cfg)
    if key not in _ESTIMATORS:
        _ESTIMATORS[key] = make_estimator(flow_cfg)
    return _ESTIMATORS[key]


@ray.remote(num_cpus=0.1, max_retries=3)
def _plan(ref: VideoRef, cfg: worker.WorkerConfig):
    return worker.safe_plan(ref, cfg)


def _node() -> str:
    return ray.get_runtime_context().get_node_id()


@ray.remote(max_retries=3)
def _decode(ref: VideoRef, plan: worker.VideoPlan, cfg: worker.WorkerConfig):
    node = _node()
    for job in worker.chunk_jobs(ref, plan, cfg):
        yield job, node  # the node rides along so the driver can report placement


@ray.remote(num_returns=2, max_retries=3)
def _flow(item: tuple, cfg: worker.WorkerConfig):
    job, decode_node = item
    encoded = worker.process_chunks([job], _estimator(cfg.flow), cfg)[0]
    return (worker.summarize(encoded), decode_node, _node()), encoded


@ray.remote(num_returns=2, max_retries=3)
def _encode(item: tuple, computed: tuple, flow_node: str, cfg: worker.WorkerConfig):
    (job, decode_node), (fields, warped) = item, computed
    encoded = worker.encode_chunk(job, fields, cfg, warped)
    return (worker.summarize(encoded), decode_node, flow_node), encoded


@ray.remote(max_retries=3)
def _write_unit(unit: Unit, videos: list, output: str, cfg: BuildConfig) -> dict:
    def results():
        for ref, plan, payload_refs, summaries, failure in videos:
            if failure is not None:
                yield VideoResult(ref=ref, status="error", error=failure)
                continue
            # One chunk at a time, parts written as they complete: neither the unit nor a
            # long video ever sits whole in this worker.
            chunks = (ray.get(r) for r in payload_refs)
            yield worker.stream_video(ref, plan, summaries, chunks, cfg.worker)

    return write_unit(unit, results(), output, cfg)


def chunk_flow_inputs(job: worker.ChunkJob, flow) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """A chunk's frames in the form the estimator takes (grey or RGB) and its (from, to) pair rows."""
    frames = job.chunk.frames
    if flow.input == "gray" and frames.ndim == 4:
        frames = worker.gray(frames)
    return frames, [(r, r + flow.step) for r in worker.chunk_pairs(job, flow.step)]


class FlowActor:
    """Holds one estimator (e.g. torch TV-L1 on a GPU) and a `PairBatcher` over it.

    Ray runs several `compute` calls at once (a threaded actor): each queues its chunks' pairs
    and waits, while the batcher's thread fills batches of B pairs across all queued chunks
    of all videos and hands each chunk its uint8 fields (a quarter of float32's bytes through
    the object store).
    """

    def __init__(self, cfg: worker.WorkerConfig) -> None:
        self.cfg = cfg
        self.estimator = make_estimator(cfg.flow)
        self.batcher = PairBatcher(self.estimator, bound=cfg.flow.bound, batch_size=cfg.flow.batch_for)

    def node_id(self) -> str:
        return _node()

    def compute(self, *items: tuple) -> list[tuple]:
        jobs = [job for job, _ in items]
        plain = [self.batcher.submit(*chunk_flow_inputs(job, self.cfg.flow)) for job in jobs]
        warped = [self._submit_warped(job) for job in jobs]  # None each without --flow-warp
        q = [(p.result(), None if w is None else worker.WarpedFields(fields=w[0].result(), cameras=w[1]))
             for p, w in zip(plain, warped)]
        # Ray splits a returned list over num_returns refs only when there are several.
        return q[0] if len(q) == 1 else q

    def _submit_warped(self, job: worker.ChunkJob):
        """Queue a chunk's camera-compensated pairs in the same batches: (future, cameras), or None."""
        if self.cfg.warp is None:
            return None
        wi = worker.warp_inputs(job, self.cfg, rgb=self.cfg.flow.input == "rgb")
        n = len(wi.cameras)
        frames = np.concatenate([wi.firsts, wi.seconds]) if n else wi.firsts
        return self.batcher.submit(frames, [(i, n + i) for i in range(n)]), wi.cameras

    def stats(self) -> dict:
        """Batches run and pairs per batch so far."""
        return {"batches": self.batcher.stats.batches, "pairs": self.batcher.stats.pairs,
                "sizes": list(self.batcher.stats.sizes)}


@dataclass(frozen=True, kw_only=True)
class RayConfig:
    """Where and how wide the build runs on Ray."""

    address: str | None = None  # None: start an embedded local Ray on loopback
    num_cpus: int | None = None  # local Ray only; None: all cores
    # Defaults leave a queue of about one chunk per CPU beyond those running, and decoders
    # working ahead, so a CPU finishing a chunk never waits for a new video's probe and first
    # decoded chunk; memory stays bounded by these counts times the chunk size.
    max_videos: int | None = None  # videos decoding at once (default: 2 x CPUs)
    max_chunks: int | None = None  # chunk tasks in flight (default: 3 x CPUs)
    # Decode, plan and write tasks reserve no CPU: a decoder waiting on back-pressure would
    # otherwise hold CPU that the flow tasks it waits for need (a deadlock), and ffmpeg's
    # work is small beside flow's. The driver bounds how many run instead (max_videos).
    decode_cpus: float = 0.0
    flow_actors: int = 0  # > 0: flow runs in this many actors (GPU builds); -1: one per GPU
    actor_gpus: float = 0.0  # GPUs per flow actor (fractions allowed)
    actor_resource: str | None = None  # custom resource that routes flow actors to their nodes
    # Chunks per actor call. The actor batches pairs across every call it holds, so one chunk
    # per call loses nothing and lets each chunk go to encoding as soon as its pairs are done.
    chunks_per_call: int = 1
    actor_concurrency: int = 64  # calls one flow actor holds at once (their pairs fill its batches)

    def __post_init__(self) -> None:
        if self.flow_actors < -1 or self.actor_gpus < 0 or self.chunks_per_call < 1 or self.actor_concurrency < 1:
            raise ValueError("flow_actors, actor_gpus must be >= 0; chunks_per_call, actor_concurrency >= 1")
        if not 0 <= self.decode_cpus <= 16:
            raise ValueError(f"decode_cpus must be in [0, 16], got {self.decode_cpus}")


# Storage settings that remote workers need to open the same bucket the driver names. Keys
# and secrets are not forwarded: cluster nodes should authenticate with their own role.
FORWARDED_ENV = ("AWS_ENDPOINT_URL", "AWS_REGION", "AWS_DEFAULT_REGION", "FSSPEC_S3", "FLOWSHARD_STORAGE_OPTIONS")


def forwarded_env() -> dict[str, str]:
    """The storage settings of this process that Ray workers get too."""
    return {k: os.environ[k] for k in FORWARDED_ENV if os.environ.get(k)}


def init_ray(cfg: RayConfig) -> None:
    """Connect to `cfg.address`, or start a local Ray bound to 127.0.0.1 with no dashboard."""
    if ray.is_initialized():
        return
    env = {"env_vars": {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", **forwarded_env()}}
    if cfg.address:
        ray.init(address=cfg.address, runtime_env=env, log_to_driver=False)
    else:
        # "local": always a fresh private instance. Without it ray.init() attaches to whatever
        # cluster `ray start` last left on this machine (another user's, or a dead one's address).
        ray.init(address="local", num_cpus=cfg.num_cpus, include_dashboard=False, log_to_driver=False,
                 runtime_env=env)
    log.info("Ray resources: %s", ray.cluster_resources())


def cluster_gpus(cfg: RayConfig) -> float:
    """GPUs the Ray cluster offers (starting or joining it as `cfg` says)."""
    init_ray(cfg)
    return float(ray.cluster_resources().get("GPU", 0.0))


@dataclass
class _Video:
    ref: VideoRef
    unit: str
    plan: Any = None
    failure: str | None = None
    gen: Any = None
    gen_done: bool = False
    payloads: list = field(default_factory=list)  # in chunk order (chunks are pulled in order)
    summaries: list = field(default_factory=list)
    pending: int = 0  # chunk results not yet known
    pairs: int = 0

    @property
    def complete(self) -> bool:
        return self.failure is not None or (self.gen_done and self.pending == 0)


def _error_text(exc: Exception) -> str:
    """The original error's message from a Ray error (which wraps it with a traceback)."""
    cause = getattr(exc, "cause", None)
    if cause is not None and not isinstance(cause, ray.exceptions.RayError):
        return str(cause)
    if isinstance(exc, ray.exceptions.RayTaskError) and exc.cause is not None:
        return _error_text(exc.cause)
    return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}".strip()


class RayExecutor:
    """Runs the build's units on Ray (see the module docstring for the task graph)."""

    def __init__(self, address: str | None = None, num_cpus: int | None = None, **kwargs) -> None:
        self.cfg = RayConfig(address=address, num_cpus=num_cpus, **kwargs)
        self.placement: dict[str, Counter] = {"decode": Counter(), "flow": Counter()}  # node id -> chunks

    def run(self, units: list[Unit], cfg: BuildConfig, output: str, done, progress) -> None:
        if not units:
            return
        init_ray(self.cfg)
        _Scheduler(self.cfg, cfg, output, done, progress, self.placement).run(units)


class _Scheduler:
    """The driver loop: start videos, feed chunks to flow, write finished units."""

    def __init__(self, rcfg: RayConfig, cfg: BuildConfig, output: str, done, progress, placement) -> None:
        self.placement = placement
        cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
        self.rcfg, self.cfg, self.output, self.done, self.progress = rcfg, cfg, output, done, progress
        self.max_videos = rcfg.max_videos or 2 * cpus
        self.max_chunks = rcfg.max_chunks or 3 * cpus
        self.videos: dict[str, _Video] = {}
        self.waiting: dict[Any, tuple[str, str]] = {}  # ref -> (kind, video key)
        self.unit_refs: dict[Any, Unit] = {}
        self.chunks_in_flight = 0
        self.actors = self._start_actors()
        self.actor_queue: list = []
        self.next_actor = 0
        self.cfg_ref = ray.put(cfg.worker)  # put once: every task takes the same config

    def _start_actors(self) -> list:
        r = self.rcfg
        count = r.flow_actors
        if count == -1:  # one actor per GPU share the cluster offers
            gpus = ray.cluster_resources().get("GPU", 0)
            if not gpus:
                raise RuntimeError("--flow-device cuda, but the Ray cluster has no GPUs")
            count = max(1, int(gpus / (r.actor_gpus or 1.0)))
        if count == 0:
            return []
        resources = {r.actor_resource: 1} if r.actor_resource else None
        cls = ray.remote(FlowActor).options(num_cpus=1, num_gpus=r.actor_gpus, resources=resources,
                                            max_restarts=3, max_task_retries=3, max_concurrency=r.actor_concurrency)
        log.info("starting %d flow actor(s)", count)
        actors = [cls.remote(self.cfg.worker) for _ in range(count)]
        self.actor_nodes = ray.get([a.node_id.remote() for a in actors])
        return actors

    # -- main loop ---------------------------------------------------------------------------
    def run(self, units: list[Unit]) -> None:
        # Only videos not copied from stored samples are computed; a unit of copies alone is
        # written at once.
        queue = deque((u, ref) for u in units for ref in u.compute_refs)
        self.unit_left = {u.name: len(u.compute_refs) for u in units}
        self.units = {u.name: u for u in units}
        for u in units:
            if not u.compute_refs:
                self._write(u)
        while queue or self.waiting or self.unit_refs or self.actor_queue or self._decoding():
            while queue and self._decoding() < self.max_videos:
                unit, ref = queue.popleft()
                self._start_video(unit, ref)
            self._pull_chunks()
            self._flush_actor_queue(force=not queue)
            ready = self._wait()
            for obj in ready:
                self._handle(obj)

    def _decoding(self) -> int:
        return sum(1 for v in self.videos.values() if not v.complete and not v.gen_done)

    def _start_video(self, unit: Unit, ref: VideoRef) -> None:
        self.videos[ref.key] = _Video(ref=ref, unit=unit.name)
        plan_ref = _plan.options(num_cpus=self.rcfg.decode_cpus).remote(ref, self.cfg_ref)
        self.waiting[plan_ref] = ("plan", ref.key)

    def _wait(self) -> list:
        objs = list(self.waiting) + list(self.unit_refs)
        gens = [v.gen for v in self.videos.values()
                if v.gen is not None and not v.gen_done and self.chunks_in_flight < self.max_chunks]
        if not objs and not gens:
            return []
        ready, _ = ray.wait(objs + gens, num_returns=1, timeout=1.0)
        return ready

    def _pull_chunks(self) -> None:
        """Take every chunk already yielded, while the bound on chunks in flight allows."""
        for v in list(self.videos.values()):
            while v.gen is not None and not v.gen_done and self.chunks_in_flight < self.max_chunks:
                ready, _ = ray.wait([v.gen], num_returns=1, timeout=0)
                if not ready:
                    break
                self._next_chunk(v)

    def _next_chunk(self, v: _Video) -> None:
        try:
            job_ref = next(v.gen)
        except StopIteration:
            v.gen_done = True
            self._maybe_finish(v)
            return
        v.pending += 1
        self.chunks_in_flight += 1
        if self.actors:
            self.actor_queue.append((v.ref.key, job_ref))
            self._flush_actor_queue(force=False)
            return
        status, payload = _flow.remote(job_ref, self.cfg_ref)
        v.payloads.append(payload)
        self.waiting[status] = ("chunk", v.ref.key)

    def _flush_actor_queue(self, force: bool) -> None:
        n = self.rcfg.chunks_per_call
        while len(self.actor_queue) >= n or (force and self.actor_queue):
            batch, self.actor_queue = self.actor_queue[:n], self.actor_queue[n:]
            index = self.next_actor % len(self.actors)
            actor = self.actors[index]
            self.next_actor += 1
            fields = actor.compute.options(num_returns=len(batch)).remote(*[j for _, j in batch])
            fields = fields if isinstance(fields, list) else [fields]
            node = self.actor_nodes[index]
            for (key, job_ref), f in zip(batch, fields):
                status, payload = _encode.remote(job_ref, f, node, self.cfg_ref)
                self.videos[key].payloads.append(payload)
                self.waiting[status] = ("chunk", key)

    def _handle(self, obj) -> None:
        if obj in self.unit_refs:
            return self._unit_written(obj)
        if obj in self.waiting:
            kind, key = self.waiting.pop(obj)
            return self._plan_done(obj, key) if kind == "plan" else self._chunk_done(obj, key)
        for v in self.videos.values():  # a generator with a chunk ready
            if v.gen is obj:
                return self._next_chunk(v)

    def _plan_done(self, ref, key: str) -> None:
        v = self.videos[key]
        try:
            plan = ray.get(ref)
        except ray.exceptions.RayError as exc:
            plan = worker.VideoFailure(reason=f"{v.ref.source}: {_error_text(exc)}")
        if isinstance(plan, worker.VideoFailure):
            v.failure = plan.reason
            return self._maybe_finish(v)
        v.plan = plan
        # SPREAD: decoders go to every node, so frames start out next to the CPUs that need them.
        v.gen = _decode.options(num_cpus=self.rcfg.decode_cpus, scheduling_strategy="SPREAD",
                                _generator_backpressure_num_objects=2).remote(v.ref, plan, self.cfg_ref)

    def _chunk_done(self, ref, key: str) -> None:
        self.chunks_in_flight -= 1
        v = self.videos.get(key)
        if v is None:  # a late chunk of a video that already failed and was written
            return
        v.pending -= 1
        try:
            summary, decode_node, flow_node = ray.get(ref)
            v.summaries.append(summary)
            v.pairs += len(summary.flow_pairs)
            self.placement["decode"][decode_node] += 1
            self.placement["flow"][flow_node] += 1
        except ray.exceptions.RayError as exc:
            if v.failure is None:
                v.failure = f"{v.ref.source}: {_error_text(exc)}"
                v.gen_done = True  # the decoder failed or the chunk was lost: this video is over
                ray.cancel(v.gen, force=False) if v.gen is not None else None
        self._maybe_finish(v)

    def _maybe_finish(self, v: _Video) -> None:
        if not v.complete or v.unit is None:
            return
        unit = v.unit
        v.unit = None  # counted once
        self.progress.video_done(VideoResult(ref=v.ref, status="error" if v.failure else "ok",
                                             flow_fields=v.pairs))
        self.unit_left[unit] -= 1
        if self.unit_left[unit] == 0:
            self._write(self.units[unit])

    def _write(self, unit: Unit) -> None:
        vids = [self.videos[r.key] for r in unit.compute_refs]
        args = [(v.ref, v.plan, v.payloads, sorted(v.summaries, key=lambda c: c.index), v.failure) for v in vids]
        ref = _write_unit.options(num_cpus=self.rcfg.decode_cpus).remote(unit, args, self.output, self.cfg)
        self.unit_refs[ref] = unit

    def _unit_written(self, ref) -> None:
        unit = self.unit_refs.pop(ref)
        try:
            record = ray.get(ref)
        except ray.exceptions.RayError as exc:  # a failed write is a per-run failure, named clearly
            raise RuntimeError(f"writing shard unit {unit.stem} failed: {_error_text(exc)}") from exc
        for r in unit.compute_refs:
            self.videos.pop(r.key, None)  # their payloads may now be freed
        self.done(unit, record)
