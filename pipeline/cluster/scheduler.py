"""The driver loop on Ray: start units and videos, feed chunks to flow and to the writers.

Each planned shard (unit) is written by a writer actor (`pipeline.build.assembly.UnitAssembler`)
that takes every encoded chunk as soon as it is done, spools it to local disk and writes the
unit's videos into its temporary tar in plan order as they complete.

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

import logging
import math
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

import ray

from pipeline import failures
from pipeline.build.assembly import UnitAssembler, VideoOutcome
from pipeline.build.config import BuildConfig
from pipeline.build.records import UnitRecord
from pipeline.build.units import Unit
from pipeline.cluster import tasks
from pipeline.cluster.startup import RayConfig
from pipeline.records import VideoRef, VideoResult
from pipeline.stages.plan import VideoFailure

log = logging.getLogger(__name__)

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


@dataclass(frozen=True, kw_only=True)
class RunContext:
    """One run of a build's units on Ray: how wide it runs, what it builds and where results go.

    done(unit, record) is called as each unit is committed, progress.video_done(result) as
    each video ends. placement and stats belong to the executor and are filled in as the run
    goes: node id -> chunks decoded / computed there, and what the run held at most.
    """

    ray_cfg: RayConfig
    cfg: BuildConfig
    output: str
    done: Callable[[Unit, UnitRecord], None]
    progress: Any
    placement: dict[str, Counter]
    stats: dict[str, int]


class Scheduler:
    """The driver loop: start units and videos, feed chunks to flow and to the writers."""

    def __init__(self, ctx: RunContext) -> None:
        self.placement, self.stats = ctx.placement, ctx.stats
        self.cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
        self.rcfg, self.cfg, self.output = ctx.ray_cfg, ctx.cfg, ctx.output
        self.done, self.progress = ctx.done, ctx.progress
        rcfg = ctx.ray_cfg
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
        self.cfg_ref = ray.put(self.cfg.worker)  # put once: every task takes the same config
        self.stats.update(peak_chunks=0, peak_writers=0, writers=0, writer_peak_rss=0)

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
        cls = ray.remote(tasks.FlowActor).options(num_cpus=cpus, num_gpus=r.actor_gpus, resources=resources,
                                            max_restarts=3, max_task_retries=3, max_concurrency=r.actor_concurrency)
        log.info("starting %d flow actor(s)", count)
        actors: list[Any] = [cls.remote(self.cfg.worker) for _ in range(count)]  # Ray actor handles
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
                plan_ref = tasks._plan.options(num_cpus=self.rcfg.decode_cpus,
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
        # num_returns=2: a list of two refs (Ray's annotations say one)
        status, payload = cast("list[ray.ObjectRef]", tasks._flow.remote(job_ref, self.cfg_ref))
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
            for (key, attempt, job_ref), f in zip(batch, fields, strict=True):
                status, payload = cast("list[ray.ObjectRef]", tasks._encode.remote(job_ref, f, node, self.cfg_ref))
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
        return None

    # -- videos ------------------------------------------------------------------------------
    def _current(self, key: str, attempt: int) -> _Video | None:
        """The video's state if `attempt` is its current try (not one given up or written)."""
        v = self.videos.get(key)
        return v if v is not None and v.attempt == attempt and v.unit in self.active else None

    def _plan_done(self, ref, key: str, attempt: int) -> None:
        v = self._current(key, attempt)
        if v is None:
            return None
        try:
            plan, v.node, v.content = ray.get(ref)
        except ray.exceptions.RayError as exc:
            return self._fail(v, f"{v.ref.source}: {_error_text(exc)}", failures.kind_of(exc))
        if isinstance(plan, VideoFailure):
            return self._fail(v, plan.reason, plan.kind)
        v.plan = plan
        # On the node that planned it: a remote input is already in that node's cache.
        where = ray.util.scheduling_strategies.NodeAffinitySchedulingStrategy(node_id=v.node, soft=True)
        v.gen = tasks._decode.options(num_cpus=self.rcfg.decode_cpus, scheduling_strategy=where,
                                _generator_backpressure_num_objects=2).remote(v.ref, plan, self.cfg_ref)
        return None

    def _chunk_done(self, ref, key: str, attempt: int, payload) -> None:
        v = self._current(key, attempt)
        if v is None:  # a late chunk of a try given up: it is dropped, not written
            self.chunks_in_flight -= 1
            return None
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
        return None

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
