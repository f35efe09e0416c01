"""The only module that imports Ray: it schedules the pipeline's stages, nothing more.

Per video: a small `_plan` task probes it (fetching a remote input into its node's cache);
a `_decode` generator task on the same node streams its frames in chunks; each chunk goes
to a `_flow` CPU task (flow + encode) or, on GPU builds, to a `FlowActor` (flow only,
batched across videos) followed by an `_encode` CPU task. Each planned shard (unit) is
written by a writer actor (`pipeline.build.assembly.UnitAssembler`) that takes every encoded
chunk as soon as it is done, spools it to local disk and writes the unit's videos into its
temporary tar in plan order as they complete.

Bounds, so memory stays flat whatever the dataset, unit or video size: units being
written (`max_writers`, writer actors reused from unit to unit), videos decoding
(`max_videos`) and chunks in flight from decoder to writer (`max_chunks`: all the object
store holds of the build's data). Results are handled as they complete with `ray.wait`,
and the driver blocks in `ray.wait` whenever it has nothing to do: it never spins.

Failures: a video that fails for a transient reason (a lost worker or node, memory,
storage; `pipeline.failures`) is restarted, up to `MAX_ATTEMPTS` tries; a broken file is an
error row at once. A writer lost with its node restarts its unit.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pipeline import failures, storage, tools, worker
from pipeline.cluster import shared_paths
from pipeline.build import versions as version
from pipeline.build.assembly import UnitAssembler, VideoOutcome
from pipeline.flow.estimators import make_estimator
from pipeline.flow.batch import PairBatcher
from pipeline.records import VideoRef, VideoResult
from pipeline.build.units import STATE_DIR, BuildConfig, Unit

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


def _node() -> str:
    return ray.get_runtime_context().get_node_id()


def _plan_video(ref: VideoRef, cfg: worker.WorkerConfig):
    # The node rides along: the decoder runs there too, so a remote input fetched into this
    # node's cache for the probe is read from that cache, not fetched again.
    plan = worker.safe_plan(ref, cfg)
    content = "" if isinstance(plan, worker.VideoFailure) else version.fetched_sha256(ref.uri)
    return plan, _node(), content


@ray.remote(num_cpus=0.1, max_retries=3)
def _plan(ref: VideoRef, cfg: worker.WorkerConfig):
    return _plan_video(ref, cfg)


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


@ray.remote(num_cpus=0, max_retries=0)
def _look(checks: list, cfg: worker.WorkerConfig) -> dict:
    import socket

    return {"failed": shared_paths.look(checks), "tools": tools.fingerprint(cfg), "host": socket.gethostname()}


def chunk_flow_inputs(job: worker.ChunkJob, flow) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """A chunk's frames in the form the estimator takes (grey or RGB) and its (from, to) pair rows."""
    return job.frames, worker.pair_rows(job, flow.step)


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
        wi = worker.warp_inputs(job, self.cfg, rgb=self.cfg.flow.input == "rgb", boxes=job.people)
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
    max_videos: int | None = None  # videos decoding at once (default: CPUs + 1, 2 x CPUs with flow actors)
    max_chunks: int | None = None  # chunks between decoder and writer (default: 3 x CPUs)
    max_writers: int | None = None  # units written at once (default: enough to feed max_videos)
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
        for name in ("max_videos", "max_chunks", "max_writers"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")


# Storage settings that remote workers need to open the same bucket the driver names. Keys
# and secrets are not forwarded: cluster nodes should authenticate with their own role. The
# runtime environment is stored by the cluster and shown in its dashboard, so secrets given
# in --storage-options (exported as FSSPEC_S3) are stripped from the JSON settings too.
FORWARDED_ENV = ("AWS_ENDPOINT_URL", "AWS_REGION", "AWS_DEFAULT_REGION", "FSSPEC_S3", "FLOWSHARD_STORAGE_OPTIONS")
_JSON_ENV = ("FSSPEC_S3", "FLOWSHARD_STORAGE_OPTIONS")
_SECRET_WORDS = ("secret", "token", "password", "passwd", "credential", "accesskey", "privatekey", "apikey")


def _is_secret(name: str) -> bool:
    flat = name.lower().replace("_", "").replace("-", "")
    return flat == "key" or any(word in flat for word in _SECRET_WORDS)


def _without_secrets(value, where: str, stripped: list[str]):
    """`value` (parsed JSON) less every field whose name says it holds a key or secret."""
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            if _is_secret(str(k)):
                stripped.append(f"{where}.{k}")
            else:
                out[k] = _without_secrets(v, f"{where}.{k}", stripped)
        return out
    if isinstance(value, list):
        return [_without_secrets(v, where, stripped) for v in value]
    return value


def forwarded_env() -> dict[str, str]:
    """The storage settings of this process that Ray workers get too, without keys or secrets."""
    env = {k: os.environ[k] for k in FORWARDED_ENV if os.environ.get(k)}
    stripped: list[str] = []
    for name in _JSON_ENV:
        if name in env:
            try:
                env[name] = json.dumps(_without_secrets(json.loads(env[name]), name, stripped), sort_keys=True)
            except ValueError:  # not JSON: nothing of it can be told safe to forward
                stripped.append(name)
                del env[name]
    if stripped:
        log.warning("not forwarding %s to Ray workers: nodes use their own credentials (instance role or "
                    "their environment)", ", ".join(stripped))
    return env


def init_ray(cfg: RayConfig) -> None:
    """Connect to `cfg.address`, or start a local Ray bound to 127.0.0.1 with no dashboard.

    Called only once there is work for Ray (after the inputs were checked and hashed). A
    running instance is reused with address "auto" (`ray start --head` once, then every build
    with `--address auto` or RAY_ADDRESS=auto): no start-up is paid per build.
    """
    if ray.is_initialized():
        return
    env = {"env_vars": {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", **forwarded_env()}}
    if cfg.address:
        ray.init(address=cfg.address, runtime_env=env, log_to_driver=False)
    else:
        # "local": always a fresh private instance. Without it ray.init() attaches to whatever
        # cluster `ray start` last left on this machine (another user's, or a dead one's address).
        # No runtime_env: its workers are this process's descendants and inherit its environment
        # (the settings above included), while a runtime_env would leave the workers Ray prestarts
        # unusable for this job and start new ones (seconds of CPU on a small machine).
        ray.init(address="local", num_cpus=cfg.num_cpus, include_dashboard=False, log_to_driver=False,
                 _system_config={"num_workers_soft_limit": idle_worker_limit(cfg.num_cpus or os.cpu_count() or 1)})
    log.info("Ray resources: %s", ray.cluster_resources())


def idle_worker_limit(cpus: int) -> int:
    """Idle worker processes a local Ray keeps for a build on `cpus` CPUs.

    Ray keeps at most as many idle workers as there are free CPUs and kills the rest after a
    second. Flow tasks hold every CPU of a build, so each decoder, probe and writer that goes
    idle for a moment was killed and a new process started for the next video (about a second
    of CPU each: measured 17 % of a 2-CPU build's wall time at 340x256). Keep enough for the
    decoders, probes and flow workers a build runs at once (see Scheduler: max_videos).
    """
    return 3 * cpus + 4


def cluster_gpus(cfg: RayConfig) -> float:
    """GPUs the Ray cluster offers: joining it when `cfg` names one; for the local Ray a build
    would start, counted the way Ray counts them, without starting it (a start costs seconds
    and must wait until the inputs have been checked)."""
    if not cfg.address and not ray.is_initialized():
        gpus = local_gpus()
        if gpus is not None:
            return gpus
    init_ray(cfg)
    return float(ray.cluster_resources().get("GPU", 0.0))


def local_gpus() -> float | None:
    """GPUs a local Ray would detect on this machine (CUDA_VISIBLE_DEVICES, else NVML), or None
    when Ray's detector cannot be asked (then the caller starts Ray and asks it)."""
    try:
        from ray._private.accelerators import get_accelerator_manager_for_resource

        manager = get_accelerator_manager_for_resource("GPU")
        visible = manager.get_current_process_visible_accelerator_ids()
        return float(len(visible) if visible is not None else manager.get_current_node_num_accelerators())
    except Exception as exc:  # a private Ray API: any change there falls back to asking a started Ray
        log.debug("cannot count local GPUs without Ray (%s)", exc)
        return None




MAX_ATTEMPTS = failures.MAX_ATTEMPTS


@dataclass
class _Video:
    ref: VideoRef
    unit: str
    attempt: int = 0  # a number unique to this try, so results of earlier tries are told apart
    plan: Any = None
    node: str | None = None  # where it was planned (and its input fetched)
    content: str = ""
    failure: str | None = None
    kind: str = ""
    gen: Any = None
    gen_done: bool = False
    summaries: list = field(default_factory=list)
    pending: int = 0  # chunk results not yet known
    pairs: int = 0

    @property
    def complete(self) -> bool:
        return self.failure is not None or (self.gen_done and self.pending == 0)


@dataclass
class _Active:
    """A unit being written: its writer actor and the videos not yet started or reported."""

    unit: Unit
    writer: Any
    attempt: int
    todo: deque  # VideoRefs not yet started, in plan order (restarted ones go first)
    left: int  # computed videos whose outcome the writer has not been sent
    finishing: bool = False


def _error_text(exc: Exception) -> str:
    """The original error's message from a Ray error (which wraps it with a traceback)."""
    cause = getattr(exc, "cause", None)
    if cause is not None and not isinstance(cause, ray.exceptions.RayError):
        return str(cause)
    if isinstance(exc, ray.exceptions.RayTaskError) and exc.cause is not None:
        return _error_text(exc.cause)
    return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}".strip()


class RayExecutor:
    """Runs the build's units on Ray (see the module docstring for the task graph).

    path_view (tests only): (node id, path) -> the path as that node sees it, to play a
    cluster whose nodes do not share a filesystem on one machine.
    """

    def __init__(self, address: str | None = None, num_cpus: int | None = None, *, path_view=None,
                 **kwargs) -> None:
        self.cfg = RayConfig(address=address, num_cpus=num_cpus, **kwargs)
        self.path_view = path_view
        self.placement: dict[str, Counter] = {"decode": Counter(), "flow": Counter()}  # node id -> chunks
        # What the last run held at most: chunks between decoder and writer, writers at once,
        # and the writers' peak resident memory (bytes).
        self.stats: dict[str, int] = {}

    def prepare(self, input_path: str, refs: list[VideoRef], output, cfg: BuildConfig) -> None:
        """On a cluster of several nodes, before any work: every node must see the local INPUT
        videos and OUTPUT (`pipeline.cluster.shared_paths`) and run the tools the version names
        (`pipeline.tools`), or the build stops with what to fix. A local Ray is one machine:
        nothing to check, and Ray is not started for it."""
        if not self.cfg.address and not ray.is_initialized():
            return
        init_ray(self.cfg)
        nodes = sorted((n["NodeID"], n["NodeManagerAddress"]) for n in ray.nodes() if n["Alive"])
        if len(nodes) < 2:
            return
        checks = shared_paths.plan(refs, output, storage.join(output, STATE_DIR))
        try:
            looks = ray.get([_look.options(scheduling_strategy=ray.util.scheduling_strategies.NodeAffinitySchedulingStrategy(
                node_id=node, soft=False)).remote(self._view(node, checks), cfg.worker) for node, _ in nodes])
        finally:
            shared_paths.clean(checks)
        for (node, address), seen in zip(nodes, looks):
            name = f"{address} ({seen['host']}, node {node[:12]})"
            if seen["failed"]:
                raise RuntimeError(shared_paths.refusal(name, seen["failed"], input_path, output))
            differ = {k: (seen["tools"].get(k), v) for k, v in sorted(cfg.tools.items()) if seen["tools"].get(k) != v}
            if differ:
                raise RuntimeError(f"node {name} runs other tools than this driver "
                                   f"({', '.join(f'{k} {a} there, {b} here' for k, (a, b) in differ.items())}): one "
                                   f"version's bytes must come from one set of tools; install the same versions on "
                                   f"every node and the driver")
        log.info("%d nodes see INPUT and OUTPUT and run the same tools", len(nodes))

    def _view(self, node: str, checks: list) -> list:
        if self.path_view is None:
            return checks
        return [dataclasses.replace(c, path=self.path_view(node, c.path)) for c in checks]

    def run(self, units: list[Unit], cfg: BuildConfig, output: str, done, progress) -> None:
        if not units:
            return
        init_ray(self.cfg)
        _Scheduler(self.cfg, cfg, output, done, progress, self.placement, self.stats).run(units)


class _Scheduler:
    """The driver loop: start units and videos, feed chunks to flow and to the writers."""

    def __init__(self, rcfg: RayConfig, cfg: BuildConfig, output: str, done, progress, placement,
                 stats: dict) -> None:
        self.placement, self.stats = placement, stats
        self.cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
        self.rcfg, self.cfg, self.output, self.done, self.progress = rcfg, cfg, output, done, progress
        # CPU flow: one decoder per CPU (and one ahead) keeps the flow tasks fed, since a chunk
        # decodes ~10x faster than it flows; more decoders only compete with flow for the cores
        # (2 x CPUs was 10 % slower on 2 CPUs). Flow actors (GPUs) need decoders on every core.
        self.max_videos = rcfg.max_videos or (2 * self.cpus if rcfg.flow_actors else self.cpus + 1)
        self.max_chunks = rcfg.max_chunks or 3 * self.cpus
        self.videos: dict[str, _Video] = {}
        self.waiting: dict[Any, tuple] = {}  # task ref -> ("plan" | "chunk", key, attempt, payload)
        self.calls: dict[Any, tuple[str, str]] = {}  # writer call ref -> (what, unit name)
        self.active: dict[str, _Active] = {}
        self.idle_writers: list = []
        self.writers: list = []
        self.reported: set[str] = set()  # videos counted in the progress bar
        self.retries: Counter = Counter()  # video key -> transient failures so far
        self.tries = 0
        self.chunks_in_flight = 0
        self.actors = self._start_actors()
        self.actor_queue: list = []
        self.next_actor = 0
        self.cfg_ref = ray.put(cfg.worker)  # put once: every task takes the same config
        stats.update(peak_chunks=0, peak_writers=0, writers=0, writer_peak_rss=0)

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
        # An actor reserves a CPU only when CPUs are left for the encode tasks it feeds:
        # with as many actors as CPUs, a reserved CPU each would starve those tasks for ever.
        cpus = 1 if self.cpus > count else 0
        cls = ray.remote(FlowActor).options(num_cpus=cpus, num_gpus=r.actor_gpus, resources=resources,
                                            max_restarts=3, max_task_retries=3, max_concurrency=r.actor_concurrency)
        log.info("starting %d flow actor(s)", count)
        actors = [cls.remote(self.cfg.worker) for _ in range(count)]
        self.actor_nodes = ray.get([a.node_id.remote() for a in actors])
        return actors

    # -- main loop ---------------------------------------------------------------------------
    def run(self, units: list[Unit]) -> None:
        self.pending: deque = deque((u, 0) for u in units)
        per_unit = sum(len(u.compute_refs) for u in units) / len(units)
        # Enough units open at once that their videos can keep max_videos decoders busy.
        self.max_writers = self.rcfg.max_writers or max(2, min(64, math.ceil(self.max_videos / max(per_unit, 1)) + 1))
        try:
            while self.pending or self.active:
                self._activate()
                self._start_videos()
                self._pull_chunks()
                self._flush_actor_queue(force=self._must_flush())
                for obj in self._wait():
                    self._handle(obj)
            self.stats["writer_peak_rss"] = max(ray.get([w.peak_rss.remote() for w in self.writers]), default=0)
            self.stats["writers"] = len(self.writers)
        finally:
            self._close_writers()

    def _close_writers(self) -> None:
        """Writers drop what they hold (a unit cut short leaves no temporary tar or spool), then go."""
        if self.active:
            aborts = [a.writer.abort.remote() for a in self.active.values()]
            ray.wait(aborts, num_returns=len(aborts), timeout=30)
        for w in self.writers:
            ray.kill(w)

    def _activate(self) -> None:
        """Open units (in plan order) while writers are free."""
        while self.pending and len(self.active) < self.max_writers:
            unit, attempt = self.pending.popleft()
            if not self.idle_writers:
                writer = ray.remote(UnitAssembler).options(num_cpus=0, max_restarts=0).remote()
                self.writers.append(writer)
                self.idle_writers.append(writer)
            a = _Active(unit=unit, writer=self.idle_writers.pop(), attempt=attempt, todo=deque(unit.compute_refs),
                        left=len(unit.compute_refs))
            self.active[unit.name] = a
            self.stats["peak_writers"] = max(self.stats["peak_writers"], len(self.active))
            self._call(a, "begin", a.writer.begin.remote(unit, self.output, self.cfg))
            self._maybe_finish_unit(a)  # a unit of copies alone is written at once

    def _start_videos(self) -> None:
        decoding = self._decoding()
        for a in self.active.values():
            while a.todo and decoding < self.max_videos:
                decoding += 1
                ref = a.todo.popleft()
                self.tries += 1
                attempt = self.tries
                self.videos[ref.key] = _Video(ref=ref, unit=a.unit.name, attempt=attempt)
                # SPREAD: probes (and the decoders that follow them) go to every node.
                plan_ref = _plan.options(num_cpus=self.rcfg.decode_cpus,
                                         scheduling_strategy="SPREAD").remote(ref, self.cfg_ref)
                self.waiting[plan_ref] = ("plan", ref.key, attempt, None)

    def _decoding(self) -> int:
        return sum(1 for v in self.videos.values() if not v.complete and not v.gen_done)

    def _must_flush(self) -> bool:
        """Send part batches to the flow actors when no more chunks can come to fill them."""
        more = any(a.todo for a in self.active.values()) or self.pending
        return not more or self.chunks_in_flight >= self.max_chunks

    def _wait(self) -> list:
        """Block until something is ready; nothing to wait for with work left is a bug, raised."""
        objs = list(self.waiting) + list(self.calls)
        if self.chunks_in_flight < self.max_chunks:
            objs += [v.gen for v in self.videos.values() if v.gen is not None and not v.gen_done]
        if not objs and self.actor_queue:
            self._flush_actor_queue(force=True)
            objs = list(self.waiting)
        if not objs:
            if self.pending or self.active:
                raise RuntimeError(f"scheduler stalled with {len(self.active)} unit(s) open, "
                                   f"{self.chunks_in_flight} chunk(s) in flight and nothing to wait for")
            return []
        ready, _ = ray.wait(objs, num_returns=1, timeout=30.0)
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
        self.stats["peak_chunks"] = max(self.stats["peak_chunks"], self.chunks_in_flight)
        if self.actors:
            self.actor_queue.append((v.ref.key, v.attempt, job_ref))
            self._flush_actor_queue(force=False)
            return
        status, payload = _flow.remote(job_ref, self.cfg_ref)
        self.waiting[status] = ("chunk", v.ref.key, v.attempt, payload)

    def _flush_actor_queue(self, force: bool) -> None:
        n = self.rcfg.chunks_per_call
        while len(self.actor_queue) >= n or (force and self.actor_queue):
            batch, self.actor_queue = self.actor_queue[:n], self.actor_queue[n:]
            index = self.next_actor % len(self.actors)
            actor = self.actors[index]
            self.next_actor += 1
            fields = actor.compute.options(num_returns=len(batch)).remote(*[j for *_, j in batch])
            fields = fields if isinstance(fields, list) else [fields]
            node = self.actor_nodes[index]
            for (key, attempt, job_ref), f in zip(batch, fields):
                status, payload = _encode.remote(job_ref, f, node, self.cfg_ref)
                self.waiting[status] = ("chunk", key, attempt, payload)

    def _handle(self, obj) -> None:
        if obj in self.calls:
            return self._call_done(obj)
        if obj in self.waiting:
            kind, key, attempt, payload = self.waiting.pop(obj)
            if kind == "plan":
                return self._plan_done(obj, key, attempt)
            return self._chunk_done(obj, key, attempt, payload)
        for v in self.videos.values():  # a generator with a chunk ready
            if v.gen is obj:
                return self._next_chunk(v)

    # -- videos ------------------------------------------------------------------------------
    def _current(self, key: str, attempt: int) -> _Video | None:
        """The video's state if `attempt` is its current try (not one given up or written)."""
        v = self.videos.get(key)
        return v if v is not None and v.attempt == attempt and v.unit in self.active else None

    def _plan_done(self, ref, key: str, attempt: int) -> None:
        v = self._current(key, attempt)
        if v is None:
            return
        try:
            plan, v.node, v.content = ray.get(ref)
        except ray.exceptions.RayError as exc:
            return self._fail(v, f"{v.ref.source}: {_error_text(exc)}", failures.kind_of(exc))
        if isinstance(plan, worker.VideoFailure):
            return self._fail(v, plan.reason, plan.kind)
        v.plan = plan
        # On the node that planned it: a remote input is already in that node's cache.
        where = ray.util.scheduling_strategies.NodeAffinitySchedulingStrategy(node_id=v.node, soft=True)
        v.gen = _decode.options(num_cpus=self.rcfg.decode_cpus, scheduling_strategy=where,
                                _generator_backpressure_num_objects=2).remote(v.ref, plan, self.cfg_ref)

    def _chunk_done(self, ref, key: str, attempt: int, payload) -> None:
        v = self._current(key, attempt)
        if v is None:  # a late chunk of a try given up: it is dropped, not written
            self.chunks_in_flight -= 1
            return
        v.pending -= 1
        try:
            summary, decode_node, flow_node = ray.get(ref)
        except ray.exceptions.RayError as exc:
            self.chunks_in_flight -= 1
            return self._fail(v, f"{v.ref.source}: {_error_text(exc)}", failures.kind_of(exc))
        v.summaries.append(summary)
        v.pairs += len(summary.flow_pairs)
        self.placement["decode"][decode_node] += 1
        self.placement["flow"][flow_node] += 1
        a = self.active[v.unit]
        # The chunk stays in flight until the writer has spooled it: that is what bounds the
        # object store. Calls to one actor run in the order they were made, so the chunks of a
        # video always reach the writer before its outcome does.
        self._call(a, "chunk", a.writer.chunk.remote(key, attempt, payload))
        self._maybe_finish(v)

    def _fail(self, v: _Video, reason: str, kind: str) -> None:
        """A failed try: restarted if transient and tries are left, else the video's error row."""
        if v.gen is not None and not v.gen_done:
            ray.cancel(v.gen, force=False)
        v.gen_done = True
        key = v.ref.key
        if kind == failures.TRANSIENT and self.retries[key] + 1 < MAX_ATTEMPTS:
            self.retries[key] += 1
            log.warning("%s; transient, trying again (%d of %d)", reason, self.retries[key] + 1, MAX_ATTEMPTS)
            del self.videos[key]  # results of this try still in flight are dropped when they come
            self.active[v.unit].todo.appendleft(v.ref)
            return
        v.failure, v.kind = reason, kind or failures.PERMANENT
        self._maybe_finish(v)

    def _maybe_finish(self, v: _Video) -> None:
        if not v.complete or self._current(v.ref.key, v.attempt) is None:
            return
        a = self.active[v.unit]
        outcome = VideoOutcome(plan=v.plan, summaries=tuple(sorted(v.summaries, key=lambda c: c.index)),
                               failure=v.failure, kind=v.kind, content_sha256=v.content)
        self._call(a, "video", a.writer.video.remote(v.ref.key, v.attempt, outcome))
        del self.videos[v.ref.key]
        if v.ref.key not in self.reported:
            self.reported.add(v.ref.key)
            self.progress.video_done(VideoResult(ref=v.ref, status="error" if v.failure else "ok",
                                                 flow_fields=v.pairs))
        a.left -= 1
        self._maybe_finish_unit(a)

    # -- units -------------------------------------------------------------------------------
    def _call(self, a: _Active, what: str, ref) -> None:
        self.calls[ref] = (what, a.unit.name)

    def _maybe_finish_unit(self, a: _Active) -> None:
        if a.left == 0 and not a.todo and not a.finishing:
            a.finishing = True
            self._call(a, "finish", a.writer.finish.remote())

    def _call_done(self, ref) -> None:
        what, name = self.calls.pop(ref)
        if what == "chunk":
            self.chunks_in_flight -= 1
        a = self.active.get(name)
        try:
            result = ray.get(ref)
        except ray.exceptions.RayError as exc:
            if a is not None:
                self._writer_failed(a, exc)
            return
        if what == "finish" and a is not None:
            del self.active[name]
            self.idle_writers.append(a.writer)
            self.done(a.unit, result)

    def _writer_failed(self, a: _Active, exc: Exception) -> None:
        """A unit's writer failed: the unit starts over with a new writer if the failure is
        transient and tries are left; otherwise the build stops (a per-run failure)."""
        kind = failures.kind_of(exc)
        if kind != failures.TRANSIENT or a.attempt + 1 >= MAX_ATTEMPTS:
            raise RuntimeError(f"writing shard unit {a.unit.stem} failed: {_error_text(exc)}") from exc
        log.warning("writing shard unit %s failed (%s); starting it over (%d of %d)", a.unit.stem,
                    _error_text(exc), a.attempt + 2, MAX_ATTEMPTS)
        del self.active[a.unit.name]
        ray.kill(a.writer)
        self.writers.remove(a.writer)
        for key in [k for k, v in self.videos.items() if v.unit == a.unit.name]:
            v = self.videos.pop(key)
            if v.gen is not None and not v.gen_done:
                ray.cancel(v.gen, force=False)
        for ref, (what, name) in list(self.calls.items()):
            if name == a.unit.name:
                del self.calls[ref]
                self.chunks_in_flight -= what == "chunk"
        self.pending.appendleft((a.unit, a.attempt + 1))
