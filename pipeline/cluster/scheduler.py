"""The driver loop on Ray: start units and videos, feed chunks to flow and to the writers.

Each planned shard (unit) is written by a writer actor (`pipeline.build.assembly.UnitAssembler`)
that takes every encoded chunk as soon as it is done, spools it to local disk and writes the
unit's videos into its temporary tar in plan order as they complete.

Bounds, so memory stays flat whatever the dataset, unit or video size: units being
written (`max_writers`, writer actors reused from unit to unit), videos decoding
(`max_videos`) and chunks in flight from decoder to writer (`max_chunks`: all the object
store holds of the build's data). Without settings the bounds follow the cluster: every
`refresh_s` seconds the driver reads its nodes (`pipeline.cluster.nodes`), checks each new
one before it takes work, sizes the bounds from the CPUs of the good nodes, starts flow
actors where GPUs appeared, and tells the autoscaler what the videos left could use.

The driver keeps up with a large cluster: every ref it waits on is indexed (ref -> what it
is), each `ray.wait` blocks for one result and then takes every one already ready, the
driver never fetches what it only passes on (`fetch_local=False`), and each writer gets its
chunks and outcomes in one call per loop. It blocks in `ray.wait` whenever it has nothing to
do: it never spins.

Failures: a video that fails for a transient reason (a lost worker, memory, storage;
`pipeline.failures`) is restarted, up to `MAX_ATTEMPTS` tries; a broken file is an error row
at once. A writer lost with its process is replaced by one on the same node that rewrites the
unit from its spool; a unit whose writers are lost `MAX_ATTEMPTS` times is committed with its
videos as transient error rows, and the build goes on.

Nodes that go: a node with a drain notice (a spot preemption, the autoscaler's scale-down;
Ray refuses new tasks there) takes no new work from the next cluster read on, and what runs
there goes on. Work lost with a node that is gone or draining starts again elsewhere (a unit
from its start, on another writer) without counting against MAX_ATTEMPTS: the machine
failed, not the video (bounded by MAX_NODE_LOSSES). A unit whose writer went with the last
node that could hold one waits in the queue for such a node.
"""

from __future__ import annotations

import logging
import math
import time
import uuid
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

import ray

from pipeline import failures
from pipeline.build.assembly import UnitAssembler, VideoOutcome, spool_tag
from pipeline.build.config import BuildConfig
from pipeline.build.records import UnitRecord
from pipeline.build.units import Unit
from pipeline.cluster import nodes as cluster_nodes
from pipeline.cluster import tasks
from pipeline.cluster.nodes import GOOD, UNBOUNDED, Node, NodeTable
from pipeline.cluster.startup import RayConfig
from pipeline.records import VideoRef, VideoResult
from pipeline.stages.plan import VideoFailure

log = logging.getLogger(__name__)

MAX_ATTEMPTS = failures.MAX_ATTEMPTS
# Tries of a video (or writers of a unit) lost with their node, gone or draining: the machine
# failed, not the video, so these do not count against MAX_ATTEMPTS (a spot cluster may take
# several nodes from under one video). Bounded all the same, for a video that brings its
# nodes down.
MAX_NODE_LOSSES = 8
# Errors of a task pinned to a node that is gone: the machine, not the video.
_NODE_GONE = frozenset({"TaskUnschedulableError", "ActorUnschedulableError"})
# Bytes per frame of a chunk in the object store (its frames and its encoded result), for the
# bound the object store sets on chunks in flight: 456x256 RGB (short side 256, 16:9), twice.
_CHUNK_BYTES_PER_FRAME = 2 * 456 * 256 * 3
_WINDOW_PER_REF_S = 30e-6  # how long a round gathers events, per ref waited on
_WINDOW_MAX_S = 0.25


@dataclass
class _Video:
    ref: VideoRef
    unit: str
    node: Node
    attempt: int = 0  # a number unique to this try, so results of earlier tries are told apart
    plan: Any = None
    content: str = ""
    failure: str | None = None
    kind: str = ""
    gens: list = field(default_factory=list)  # its generator tasks (several parts of a fused video)
    parts_left: int = 0  # its generators not yet exhausted
    planned: set = field(default_factory=set)  # fused parts whose plan (their first item) was taken
    gen_done: bool = False
    decoding: bool = True  # counts against max_videos (and its node's share) until its decoder ends
    fused: bool = False  # `_video` tasks plan, decode, flow and encode it (see `_fused_parts`)
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
    node: Node  # where its writer (and spool) is
    todo: deque  # VideoRefs not yet started, in plan order (restarted ones go first)
    left: int  # computed videos whose outcome the writer has not been sent
    losses: int = 0  # writers lost so far (but those lost with their node)
    node_losses: int = 0  # writers lost with their node (gone or draining)
    spool: str = ""  # the writer's spool folder, once `begin` answered
    busy: bool = False  # waiting for the writer to begin or take over: no video may start
    finishing: bool = False
    committing: bool = False  # the writer commits it in the background (and may take another unit)
    chunks: list = field(default_factory=list)  # (key, attempt) of the chunks for the next call
    payloads: list = field(default_factory=list)
    outcomes: list = field(default_factory=list)  # (key, attempt, outcome) for the next call


def _error_text(exc: Exception) -> str:
    """The original error's message from a Ray error (which wraps it with a traceback)."""
    cause = getattr(exc, "cause", None)
    if cause is not None and not isinstance(cause, ray.exceptions.RayError):
        return str(cause)
    if isinstance(exc, ray.exceptions.RayTaskError) and exc.cause is not None:
        return _error_text(exc.cause)
    return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}".strip()


def _kind(exc: Exception) -> str:
    """`failures.kind_of`, plus a task pinned to a node that left the cluster: transient."""
    if {c.__name__ for c in type(exc).__mro__} & _NODE_GONE:
        return failures.TRANSIENT
    return failures.kind_of(exc)


@dataclass(frozen=True, kw_only=True)
class RunContext:
    """One run of a build's units on Ray: how wide it runs, what it builds and where results go.

    done(unit, record) is called as each unit is committed, progress.video_done(result) as
    each video ends. placement and stats belong to the executor and are filled in as the run
    goes: node id -> chunks decoded / computed there, and what the run held at most. checks:
    what each node must see before it takes work (`pipeline.cluster.shared_paths`), with the
    INPUT path named in the warning; None on a local Ray (one machine, nothing to check).
    """

    ray_cfg: RayConfig
    cfg: BuildConfig
    output: str
    done: Callable[[Unit, UnitRecord], None]
    progress: Any
    placement: dict[str, Counter]
    stats: dict[str, int]
    checks: list | None = None
    input_path: str = ""
    path_view: Callable[[str, list], list] | None = None  # tests: (node id, checks) -> checks as it sees them


class Scheduler:
    """The driver loop: start units and videos, feed chunks to flow and to the writers."""

    def __init__(self, ctx: RunContext) -> None:
        self.ctx = ctx
        self.placement, self.stats = ctx.placement, ctx.stats
        self.rcfg, self.cfg, self.output = ctx.ray_cfg, ctx.cfg, ctx.output
        self.done, self.progress = ctx.done, ctx.progress
        self.tag = spool_tag(ctx.output, uuid.uuid4().hex[:8])  # this run's spools, told from dead runs
        self.nodes = NodeTable(checked=ctx.checks is not None)
        self.videos: dict[str, _Video] = {}
        self.refs: dict[Any, tuple] = {}  # every ref waited on but generators -> what it is
        self.gens: dict[Any, str] = {}  # decode generator -> video key
        # Generators with a chunk ready that the bound on chunks in flight held back: taken
        # first once chunks are written, and not waited on meanwhile.
        self.parked: deque = deque()
        self.fetched: dict[Any, Any] = {}  # values of this round's ready refs, fetched in one call
        self.active: dict[str, _Active] = {}  # units not yet committed, by name
        self.idle_writers: list[tuple[Any, Node]] = []
        self.carried: dict[str, tuple[int, int]] = {}  # unit -> (losses, node losses) while requeued
        self.writers: list[tuple[Any, Node]] = []
        self.dirty: set[str] = set()  # units with chunks or outcomes for their writer's next call
        self.reported: set[str] = set()  # videos counted in the progress bar
        self.retries: Counter = Counter()  # video key -> transient failures so far
        self.node_losses: Counter = Counter()  # video key -> tries lost with their node
        self.tries = self.decoding = self.chunks_in_flight = 0
        self.actors: list[tuple[Any, Node]] = []
        self.actor_queue: list = []
        self.next_actor = 0
        self.max_videos = self.max_chunks = self.max_writers = 1
        self.per_unit = 1.0
        self.videos_left = 0
        self.asked: tuple | None = None  # the last request to the autoscaler
        self.next_refresh = 0.0
        self.starved_since: float | None = None  # work waits for nodes, actors or writer nodes
        self.starved_for = ""
        self.starved_logged = False
        self.bad_reason = ""  # why the last node that failed its checks gets no work
        self.cfg_ref = ray.put(self.cfg.worker)  # put once: every task takes the same config
        self.stats.update(
            peak_chunks=0,
            peak_writers=0,
            writers=0,
            writer_peak_rss=0,
            events=0,
            waits=0,
            fused_videos=0,
            fused_tasks=0,
        )

    # -- main loop ---------------------------------------------------------------------------
    def run(self, units: list[Unit]) -> None:
        self.pending: deque = deque(units)
        self.per_unit = sum(len(u.compute_refs) for u in units) / len(units)
        self.videos_left = sum(len(u.compute_refs) for u in units)
        try:
            while self.pending or self.active:
                if time.monotonic() >= self.next_refresh:
                    self._refresh()
                self._activate()
                self._start_videos()
                self._unpark()
                self._flush_actor_queue(force=self._must_flush())
                self._flush_writers()
                ready = self._wait()
                self.stats["waits"] += 1
                self._fetch(ready)
                for obj in ready:
                    self._handle(obj)
                self.fetched.clear()
            self.stats["writer_peak_rss"] = max(ray.get([w.peak_rss.remote() for w, _ in self.writers]), default=0)
            self.stats["writers"] = len(self.writers)
        finally:
            self._close()

    def _close(self) -> None:
        """Writers drop what they hold (a unit cut short leaves no temporary tar or spool), then go;
        the build's request to the autoscaler is withdrawn."""
        try:
            cluster_nodes.request(0, [])
        except Exception as exc:
            log.warning("could not clear the build's resource request: %s", exc)
        if self.active:
            aborts = [a.writer.abort.remote() for a in self.active.values() if not a.committing]
            ray.wait(aborts, num_returns=len(aborts), timeout=30)
        for w, _ in self.writers:
            ray.kill(w)

    # -- the cluster -------------------------------------------------------------------------
    def _refresh(self) -> None:
        """Read the nodes, check new ones, size the bounds, place actors, tell the autoscaler."""
        self.next_refresh = time.monotonic() + self.rcfg.refresh_s
        joined, left = self.nodes.refresh()
        for node in joined:
            self._check(node)
        for node in left:
            self._node_left(node)
        self._read_drains()
        self._size()
        self._place_actors()
        self._ask()
        if self.nodes.all_bad():
            raise RuntimeError("no node of the Ray cluster may take work: " + self.bad_reason)

    def _node_left(self, node: Node) -> None:
        """`node` is gone (Ray says so, or a task pinned to it could not be placed): no more work
        goes there, and its actors and idle writers are forgotten."""
        node.alive = False
        log.warning("node %s left the cluster; its work is done elsewhere", node.name)
        self._stop_placing(node)

    def _read_drains(self) -> None:
        """`_node_draining` for each node that got a drain notice since the last read."""
        for node, deadline in self.nodes.read_draining():
            self._node_draining(node, deadline)

    def _node_draining(self, node: Node, deadline_ms: int | None) -> None:
        """`node` got a drain notice (a spot preemption, a scale-down): Ray refuses new tasks
        there, so no new video, writer or flow call goes there. What runs there goes on: a fused
        video finishes, a unit's writer keeps writing; what the node takes with it when it goes
        starts again elsewhere, not counted as a try. deadline_ms: 0 for none, None when the
        node refused a task before its notice was on record."""
        if deadline_ms is None:
            left_s = "it refuses new tasks; the notice is not on record yet"
        else:
            left_s = f"deadline in {max(0.0, deadline_ms / 1000 - time.time()):.0f} s" if deadline_ms else "no deadline"
        log.warning(
            "node %s got a drain notice (%s): it takes no new work, and what it runs is done elsewhere "
            "if the node goes first",
            node.name,
            left_s,
        )
        self._stop_placing(node)

    def _stop_placing(self, node: Node) -> None:
        """No new work for `node` (gone or draining): its flow actors leave the rotation and its
        writers that hold no unit end (one still committing its last unit ends after the commit),
        so the run's end never asks a writer of a gone node for its memory peak."""
        self.actors = [(a, n) for a, n in self.actors if n is not node]
        for w, n in [x for x in self.writers if x[1] is node]:
            if not self._holds_unit(w):
                self._retire(w, n)
        self.idle_writers = [x for x in self.idle_writers if x[1] is not node]

    def _holds_unit(self, writer) -> bool:
        return any(a.writer is writer for a in self.active.values())

    def _retire(self, writer, node: Node) -> None:
        """End a writer that holds no unit (its node is draining or gone)."""
        ray.kill(writer)
        self._forget_writer(writer, node)

    def _forget_writer(self, writer, node: Node) -> None:
        """Take an ended (or ending) writer out of the writer lists."""
        self.idle_writers = [x for x in self.idle_writers if x[0] is not writer]
        if (writer, node) in self.writers:
            self.writers.remove((writer, node))
            node.writers -= 1

    def _gone(self, exc: Exception, node: Node) -> None:
        """A task or actor pinned to `node` could not run there because the node is gone: it
        leaves the table now, before Ray's node list says so (which can lag by seconds)."""
        names = {c.__name__ for c in type(exc).__mro__}
        if getattr(exc, "preempted", False):  # an actor whose node a preemption drained, then ended
            names.add("NodeDiedError")
        if not node.alive or node.draining or not names & (_NODE_GONE | {"NodeDiedError"}):
            return
        if names & _NODE_GONE:
            # Ray refuses tasks on a draining node the moment the notice comes, before the next
            # cluster read would see it, and even before the notice is on record: a node Ray
            # still lists is draining, not gone (the next read says which, should it be gone).
            self._read_drains()
            if not node.draining and node.id in cluster_nodes.alive_nodes():
                node.draining = True
                self._node_draining(node, None)
            if node.draining:
                return
        self._node_left(node)

    def _check(self, node: Node) -> None:
        if node.state == GOOD:  # a local Ray: this machine, whose stale spools go now
            from pipeline.build.assembly import remove_stale_spools

            remove_stale_spools(self.tag)
            return
        checks = self.ctx.checks or []
        if self.ctx.path_view is not None:
            checks = self.ctx.path_view(node.id, checks)
        ref = tasks._look.options(scheduling_strategy=node.pin()).remote(checks, self.cfg.worker, self.tag)
        self.refs[ref] = ("look", node)

    def _look_done(self, ref, node: Node) -> None:
        try:
            seen = ray.get(ref)
        except ray.exceptions.RayError as exc:
            if node.alive:
                log.warning("node %s could not be checked (%s): it gets no work", node.name, _error_text(exc))
            node.state = cluster_nodes.BAD
            return
        seen["name"] = f"{node.address} ({seen['host']}, node {node.id[:12]})"
        problem = cluster_nodes.node_problem(seen, self.cfg.tools, self.ctx.input_path, self.output)
        if problem is None:
            node.state = GOOD
            log.info(
                "node %s checked: it sees INPUT and OUTPUT and runs the same tools%s",
                seen["name"],
                f"; removed {seen['stale_spools']} stale spool(s)" if seen.get("stale_spools") else "",
            )
            self._size()
            self._place_actors()
            return
        node.state = cluster_nodes.BAD
        self.bad_reason = problem
        log.warning("node %s gets no work: %s", seen["name"], problem)
        if self.nodes.all_bad():
            raise RuntimeError("no node of the Ray cluster may take work: " + problem)

    def _size(self) -> None:
        """The bounds, from the CPUs of the good nodes (or the settings that fix them)."""
        cpus = max(1, self.nodes.cpus())
        r = self.rcfg
        self.max_videos = r.max_videos or max(1, sum(self._slots(n) for n in self.nodes.good()))
        store = sum(n.resources.get("object_store_memory", 0) for n in self.nodes.good())
        chunk_bytes = _CHUNK_BYTES_PER_FRAME * self.cfg.worker.sample.chunk_frames
        by_store = int(store / 2 / chunk_bytes) if store else UNBOUNDED  # half the store for chunks
        self.max_chunks = r.max_chunks or max(2, min(3 * cpus, by_store))
        self.stats["max_videos"], self.stats["max_chunks"] = self.max_videos, self.max_chunks
        # Enough units open at once that their videos can keep max_videos decoders busy.
        self.max_writers = r.max_writers or max(2, min(64, math.ceil(self.max_videos / max(self.per_unit, 1)) + 1))

    def _slots(self, node: Node) -> int:
        """Videos `node` decodes at once. CPU flow: one decoder per CPU (and one ahead) keeps the
        flow tasks fed, since a chunk decodes ~10x faster than it flows; more decoders only compete
        with flow for the cores (2 x CPUs was 10 % slower on 2 CPUs). Flow actors (GPUs) need
        decoders on every core. A node without CPUs runs no flow or encode task: no videos."""
        if node.cpus < 1:
            return 0
        return 2 * node.cpus if self.rcfg.flow_actors else node.cpus + 1

    def _ask(self) -> None:
        """Tell the autoscaler what the work left could use (only when that changed)."""
        actors = self.rcfg.flow_actors
        units_left = len(self.pending) + len(self.active)
        ask = cluster_nodes.demand(self.rcfg, self.videos_left, actors, min(units_left, self.max_writers))
        key = (ask[0], tuple(tuple(sorted(b.items())) for b in ask[1]))
        if key != self.asked:
            self.asked = key
            cluster_nodes.request(*ask)

    def _place_actors(self) -> None:
        """Start flow actors on good nodes with room for them, up to the count asked (-1: every GPU)."""
        r = self.rcfg
        if not r.flow_actors:
            return
        target = r.flow_actors if r.flow_actors > 0 else UNBOUNDED
        while len(self.actors) < target:
            room = [n for n in self.nodes.good() if n.actors < cluster_nodes.actor_slots(n, r)]
            if not room:
                break
            node = min(room, key=lambda n: n.actors)
            if target == UNBOUNDED and cluster_nodes.actor_slots(node, r) == UNBOUNDED:
                break  # -1 without GPUs or a routing resource: nothing to count actors by
            # An actor reserves a CPU only when its node keeps CPUs for the encode tasks it feeds
            # (they run next to it): with as many actors as CPUs there, a reserved CPU each would
            # starve those tasks for ever.
            here = min(cluster_nodes.actor_slots(node, r), r.flow_actors if r.flow_actors > 0 else UNBOUNDED)
            cls = ray.remote(tasks.FlowActor).options(
                num_cpus=1 if node.cpus > here else 0,
                num_gpus=r.actor_gpus,
                resources={r.actor_resource: 1} if r.actor_resource else None,
                max_restarts=3,
                max_task_retries=3,
                max_concurrency=r.actor_concurrency,
                scheduling_strategy=node.pin(),
            )
            self.actors.append((cls.remote(self.cfg.worker), node))
            node.actors += 1
            log.info("started flow actor %d on node %s", len(self.actors), node.name)

    def _starved(self, what: str | None) -> None:
        """Note whether work waits for something the cluster lacks; past min_wait_s it is an error."""
        if what is None:
            self.starved_since = None
            return
        now = time.monotonic()
        if self.starved_since is None or what != self.starved_for:
            self.starved_since, self.starved_for, self.starved_logged = now, what, False
        elif not self.starved_logged and now - self.starved_since >= 3.0:  # not the first checks of a start
            self.starved_logged = True
            log.info("waiting up to %.0f s for %s (asked the autoscaler for it)", self.rcfg.min_wait_s, what)
        elif now - self.starved_since > self.rcfg.min_wait_s:
            raise RuntimeError(
                f"waited {self.rcfg.min_wait_s:.0f} s for {what}: none came. Start such nodes "
                f"(ray_cluster.yaml's node types, their max_workers) or wait longer with --min-wait"
            )

    def _what_is_missing(self) -> str | None:
        """What the work left waits for, if anything: good nodes with CPUs, flow actors, writer nodes."""
        r = self.rcfg
        if (self.pending or self.active) and not self.nodes.good():
            return "a node that passes its checks"
        if (
            self.decoding == 0
            and any(a.todo for a in self.active.values())
            and self.nodes.video_node(self._slots) is None
        ):
            return "a node with CPUs for decoding and flow"
        if r.flow_actors and not self.actors and (self.actor_queue or self.decoding):
            needs = ", ".join(f"{k}={v:g}" for k, v in cluster_nodes.actor_bundle(r).items()) or "any resources"
            return f"a node for the flow actors ({needs})"
        if self.pending and not self.active and not self.idle_writers:
            return (
                f"a node offering the writer resource {r.writer_resource}"
                if r.writer_resource
                else "a node for the shard writers"
            )
        return None

    # -- waiting -----------------------------------------------------------------------------
    def _wait(self) -> list:
        """Block until something is ready, then take everything ready; at the latest when the
        cluster is due to be read again. Nothing to wait for with work left and nothing missing
        from the cluster is a bug, raised."""
        objs = list(self.refs)
        if self.chunks_in_flight < self.max_chunks:
            parked = set(self.parked)
            objs += [g for g in self.gens if g not in parked] if parked else list(self.gens)
        if not objs and self.actor_queue and self.actors:
            self._flush_actor_queue(force=True)
            objs = list(self.refs)
        timeout = max(0.0, self.next_refresh - time.monotonic())
        missing = self._what_is_missing()
        self._starved(missing)
        if not objs:
            if missing is None and (self.pending or self.active):
                raise RuntimeError(
                    f"scheduler stalled with {len(self.active)} unit(s) open, "
                    f"{self.chunks_in_flight} chunk(s) in flight and nothing to wait for"
                )
            time.sleep(timeout)
            return []
        ready, _ = ray.wait(objs, num_returns=1, timeout=timeout, fetch_local=False)
        if ready and len(objs) > 1:
            # Then everything ready within a short window: each ray.wait is a pass over every
            # ref in flight (about 0.4 us each), so events are gathered into rounds whose
            # passes cost at most a few percent of the window. A window of 30 us per ref adds
            # ~0.1 s per hop at 4,000 refs (1,000 CPUs), against seconds of work per chunk.
            window = min(_WINDOW_MAX_S, _WINDOW_PER_REF_S * len(objs))
            ready, _ = ray.wait(objs, num_returns=len(objs), timeout=window, fetch_local=False)
        return ready

    def _handle(self, obj) -> None:
        key = self.gens.get(obj)
        if key is not None:
            if self.chunks_in_flight >= self.max_chunks:
                self.parked.append(obj)  # taken once chunks are written (`_unpark`)
                return None
            self.stats["events"] += 1
            return self._next_chunk(self.videos[key], obj)
        what = self.refs.pop(obj, None)
        if what is None:
            return None
        self.stats["events"] += 1
        handlers: dict[str, Callable[..., None]] = {
            "plan": self._plan_done,
            "chunk": self._chunk_done,
            "call": self._call_done,
            "look": self._look_done,
        }
        return handlers[what[0]](obj, *what[1:])

    def _fetch(self, ready: list) -> None:
        """The values of the ready refs the handlers read, in one `ray.get` (one round trip, not
        one per event); any error leaves them to be read one by one, each with its own error."""
        wanted = [obj for obj in ready if obj in self.refs and self.refs[obj][0] in ("plan", "chunk", "call")]
        if len(wanted) < 2:
            return
        try:
            self.fetched = dict(zip(wanted, ray.get(wanted), strict=True))
        except ray.exceptions.RayError:  # one task's error: `_get` reads each ref and meets it there
            self.fetched = {}

    def _get(self, ref):
        """A ready ref's value: fetched with the round's others, else read now (raising its error)."""
        if ref in self.fetched:
            return self.fetched.pop(ref)
        return ray.get(ref)

    def _unpark(self) -> None:
        """Take the chunks the bound held back, as far as the bound now allows."""
        while self.parked and self.chunks_in_flight < self.max_chunks:
            gen = self.parked.popleft()
            key = self.gens.get(gen)
            if key is not None:  # not given up meanwhile
                self._next_chunk(self.videos[key], gen)

    # -- videos ------------------------------------------------------------------------------
    def _start_videos(self) -> None:
        for a in self.active.values():
            while a.todo and not a.busy and self.decoding < self.max_videos:
                node = self.nodes.video_node(self._slots)
                if node is None:
                    return
                parts = self._fused_parts(node)
                ref = a.todo.popleft()
                self.tries += 1
                v = _Video(ref=ref, unit=a.unit.name, node=node, attempt=self.tries)
                self.videos[ref.key] = v
                self.decoding += 1
                node.open += 1
                if parts:
                    self._start_fused(v, parts)
                    continue
                plan_ref = tasks._plan.options(num_cpus=self.rcfg.decode_cpus, scheduling_strategy=node.pin()).remote(
                    ref, self.cfg_ref
                )
                self.refs[plan_ref] = ("plan", ref.key, v.attempt)

    def _fused_parts(self, node: Node) -> int:
        """How many fused tasks the next video, on `node`, runs as (0: the split path).

        A CPU build (no flow actors) runs every video fused: one process plans, decodes, flows
        and encodes it, so frames never cross the object store and no decoder process runs
        beside the flow ones. While at least a CPU's worth of videos wait to start, one task per
        video keeps every CPU busy. The build's last videos are shared over the CPUs the others
        free: `cpus // videos left` tasks each, every one computing every n-th chunk.
        """
        if not self.rcfg.fused or self.rcfg.flow_actors:
            return 0
        if self.cfg.worker.sample.clips:  # a clips-mode video is one job: nothing to share
            return 1
        waiting = self.videos_left - len(self.videos)  # this one included
        return max(1, node.cpus // max(1, waiting))

    def _start_fused(self, v: _Video, parts: int) -> None:
        v.fused, v.parts_left = True, parts
        self.stats["fused_videos"] += 1
        self.stats["fused_tasks"] += parts
        # Room for a chunk's two items (status, payload) and the next chunk's status: a task
        # computes one chunk ahead while the driver passes this one to its writer, no more.
        for part in range(parts):
            gen = tasks._video.options(
                num_cpus=1, scheduling_strategy=v.node.pin(), _generator_backpressure_num_objects=3
            ).remote(v.ref, self.cfg_ref, part, parts)
            v.gens.append(gen)
            self.gens[gen] = v.ref.key

    def _fused_item(self, v: _Video, gen, item) -> None:
        """The next item of a fused video's task: its plan first, then a chunk (status, payload)."""
        if gen not in v.planned:
            v.planned.add(gen)
            if v.plan is None:  # the other parts' plans are the same
                self._planned(v, lambda: ray.get(item))
            return
        # The payload is yielded right after its status; after an error there is none (the
        # status ref holds the error, met in `_chunk_done`).
        payload = next(gen, None)
        v.pending += 1
        self.chunks_in_flight += 1
        self.stats["peak_chunks"] = max(self.stats["peak_chunks"], self.chunks_in_flight)
        self.refs[item] = ("chunk", v.ref.key, v.attempt, payload)

    def _planned(self, v: _Video, read: Callable[[], tuple]) -> bool:
        """Take the video's plan (`read()` returns `tasks.plan_video`'s result); False when the
        video failed instead (an error row, or a try again)."""
        try:
            plan, _, v.content = read()
        except ray.exceptions.RayError as exc:
            self._task_failed(v, exc)
            return False
        if isinstance(plan, VideoFailure):
            self._fail(v, plan.reason, plan.kind)
            return False
        v.plan = plan
        return True

    def _release(self, v: _Video) -> None:
        """The video's decoder is over (done, failed or dropped): its slot is free.

        A try given up may leave generator tasks running. They are not cancelled: `ray.cancel`
        racing with a task's own end kills the driver in Ray 2.60 (a failed internal check,
        "Tried to complete task that was not pending", then exit 1 with no Python error), and a
        try's parts often end together (every part of a cut-short video meets the cut). Every
        reference to them is dropped instead, so Ray deletes their streams: each runs to its end
        without the backpressure holding it, and what it yields is freed unread.
        """
        if v.decoding:
            v.decoding = False
            self.decoding -= 1
            v.node.open -= 1
        dropped = set(v.gens)
        for gen in dropped:
            self.gens.pop(gen, None)
        if dropped and self.parked:
            self.parked = deque(g for g in self.parked if g not in dropped)
        v.gens = []

    def _must_flush(self) -> bool:
        """Send part batches to the flow actors when no more chunks can come to fill them."""
        more = self.pending or any(a.todo for a in self.active.values())
        return not more or self.chunks_in_flight >= self.max_chunks

    def _current(self, key: str, attempt: int) -> _Video | None:
        """The video's state if `attempt` is its current try (not one given up or written)."""
        v = self.videos.get(key)
        return v if v is not None and v.attempt == attempt and v.unit in self.active else None

    def _plan_done(self, ref, key: str, attempt: int) -> None:
        v = self._current(key, attempt)
        if v is None or not self._planned(v, lambda: self._get(ref)):
            return
        # On the node that planned it: a remote input is already in that node's cache.
        gen = tasks._decode.options(
            num_cpus=self.rcfg.decode_cpus, scheduling_strategy=v.node.pin(), _generator_backpressure_num_objects=2
        ).remote(v.ref, v.plan, self.cfg_ref)
        v.gens, v.parts_left = [gen], 1
        self.gens[gen] = key

    def _next_chunk(self, v: _Video, gen) -> None:
        try:
            job_ref = next(gen)
        except StopIteration:
            self.gens.pop(gen, None)
            v.parts_left -= 1
            if v.parts_left == 0:
                v.gen_done = True
                self._release(v)
                self._maybe_finish(v)
            return
        if v.fused:
            self._fused_item(v, gen, job_ref)
            return
        v.pending += 1
        self.chunks_in_flight += 1
        self.stats["peak_chunks"] = max(self.stats["peak_chunks"], self.chunks_in_flight)
        if self.rcfg.flow_actors:
            self.actor_queue.append((v.ref.key, v.attempt, job_ref))
            self._flush_actor_queue(force=False)
            return
        # num_returns=2: a list of two refs (Ray's annotations say one)
        status, payload = cast(
            "list[ray.ObjectRef]", tasks._flow.options(scheduling_strategy=v.node.pin()).remote(job_ref, self.cfg_ref)
        )
        self.refs[status] = ("chunk", v.ref.key, v.attempt, payload)

    def _flush_actor_queue(self, force: bool) -> None:
        n = self.rcfg.chunks_per_call
        while self.actors and (len(self.actor_queue) >= n or (force and self.actor_queue)):
            batch, self.actor_queue = self.actor_queue[:n], self.actor_queue[n:]
            actor, node = self.actors[self.next_actor % len(self.actors)]
            self.next_actor += 1
            fields = actor.compute.options(num_returns=len(batch)).remote(*[j for *_, j in batch])
            fields = fields if isinstance(fields, list) else [fields]
            for (key, attempt, job_ref), f in zip(batch, fields, strict=True):
                # Encoding next to the actor: its node was checked, and has CPUs for it.
                status, payload = cast(
                    "list[ray.ObjectRef]",
                    tasks._encode.options(scheduling_strategy=node.pin()).remote(job_ref, f, node.id, self.cfg_ref),
                )
                self.refs[status] = ("chunk", key, attempt, payload)

    def _chunk_done(self, ref, key: str, attempt: int, payload) -> None:
        v = self._current(key, attempt)
        if v is None:  # a late chunk of a try given up: it is dropped, not written
            self.chunks_in_flight -= 1
            return None
        v.pending -= 1
        try:
            summary, decode_node, flow_node = self._get(ref)
        except ray.exceptions.RayError as exc:
            self.chunks_in_flight -= 1
            return self._task_failed(v, exc)
        if payload is None:  # a fused task's chunk without its encoded bytes (cannot happen; said if it does)
            self.chunks_in_flight -= 1
            return self._fail(v, f"{v.ref.source}: a chunk came without its encoded bytes", failures.TRANSIENT)
        v.summaries.append(summary)
        v.pairs += len(summary.flow_pairs)
        self.placement["decode"][decode_node] += 1
        self.placement["flow"][flow_node] += 1
        a = self.active[v.unit]
        # The chunk stays in flight until the writer has spooled it: that is what bounds the
        # object store. Calls to one actor run in the order they were made, and a call's chunks
        # are spooled before its outcomes, so a video's chunks always reach the writer first.
        a.chunks.append((key, attempt))
        a.payloads.append(payload)
        self.dirty.add(a.unit.name)
        self._maybe_finish(v)
        return None

    def _task_failed(self, v: _Video, exc: Exception) -> None:
        """A task of the video's try failed (`_fail`); lost with its node when that node is gone
        or draining and the error is transient."""
        self._gone(exc, v.node)
        kind = _kind(exc)
        lost = kind == failures.TRANSIENT and v.node.leaving
        self._fail(v, f"{v.ref.source}: {_error_text(exc)}", kind, node_lost=lost)

    def _fail(self, v: _Video, reason: str, kind: str, *, node_lost: bool = False) -> None:
        """A failed try: restarted if transient and tries are left, else the video's error row.
        A try lost with its node restarts without counting (up to MAX_NODE_LOSSES times)."""
        v.gen_done = True
        self._release(v)
        key = v.ref.key
        if node_lost and self.node_losses[key] < MAX_NODE_LOSSES:
            self.node_losses[key] += 1
            log.warning("%s; its node %s is gone or draining: the video starts again elsewhere", reason, v.node.name)
            return self._retry(v)
        if kind == failures.TRANSIENT and self.retries[key] + 1 < MAX_ATTEMPTS:
            self.retries[key] += 1
            log.warning("%s; transient, trying again (%d of %d)", reason, self.retries[key] + 1, MAX_ATTEMPTS)
            return self._retry(v)
        v.failure, v.kind = reason, kind or failures.PERMANENT
        self._maybe_finish(v)
        return None

    def _retry(self, v: _Video) -> None:
        """Start the video again (first in its unit's queue)."""
        del self.videos[v.ref.key]  # results of this try still in flight are dropped when they come
        self.active[v.unit].todo.appendleft(v.ref)

    def _maybe_finish(self, v: _Video) -> None:
        if not v.complete or self._current(v.ref.key, v.attempt) is None:
            return
        a = self.active[v.unit]
        outcome = VideoOutcome(
            plan=v.plan,
            summaries=tuple(sorted(v.summaries, key=lambda c: c.index)),
            failure=v.failure,
            kind=v.kind,
            content_sha256=v.content,
        )
        a.outcomes.append((v.ref.key, v.attempt, outcome))
        self.dirty.add(a.unit.name)
        del self.videos[v.ref.key]
        self._report(v.ref, "error" if v.failure else "ok", v.pairs)
        a.left -= 1
        self._maybe_finish_unit(a)

    def _report(self, ref: VideoRef, status: str, pairs: int = 0) -> None:
        if ref.key not in self.reported:
            self.reported.add(ref.key)
            self.videos_left -= 1
            self.progress.video_done(VideoResult(ref=ref, status=status, flow_fields=pairs))

    # -- units and writers -------------------------------------------------------------------
    def _activate(self) -> None:
        """Open units (in plan order) while writers are free."""
        while self.pending and sum(not a.committing for a in self.active.values()) < self.max_writers:
            got = self._writer()
            if got is None:
                return
            writer, node = got
            unit = self.pending.popleft()
            a = _Active(unit=unit, writer=writer, node=node, todo=deque(unit.compute_refs), left=len(unit.compute_refs))
            a.losses, a.node_losses = self.carried.pop(unit.name, (0, 0))  # a unit requeued by `_requeue`
            self.active[unit.name] = a
            writing = sum(not a.committing for a in self.active.values())
            self.stats["peak_writers"] = max(self.stats["peak_writers"], writing)
            self._call(a, "begin", a.writer.begin.remote(unit, self.output, self.cfg))
            self._maybe_finish_unit(a)  # a unit of copies alone is written at once

    def _writer(self, node: Node | None = None) -> tuple[Any, Node] | None:
        """An idle writer, or a new one on `node` (default: the good node with the fewest
        writers); None when no node may hold one now."""
        if node is None and self.idle_writers:
            return self.idle_writers.pop()
        node = node or self.nodes.writer_node(self.rcfg.writer_resource)
        if node is None:
            return None
        res = self.rcfg.writer_resource
        # `committed` runs in a concurrency group of its own: the calls of the next unit never
        # wait behind the upload of the last one.
        cls = ray.remote(concurrency_groups={"commit": 1})(UnitAssembler)  # type: ignore[call-overload]
        writer = cls.options(
            num_cpus=0, max_restarts=0, resources={res: 1} if res else None, scheduling_strategy=node.pin()
        ).remote(self.tag)
        node.writers += 1
        self.writers.append((writer, node))
        return writer, node

    def _call(self, a: _Active, what: str, ref, chunks: int = 0) -> None:
        self.refs[ref] = ("call", what, a.unit.name, a.writer, chunks)

    def _flush_writers(self) -> None:
        """One call per writer with every chunk and outcome gathered since the last."""
        for name in self.dirty:
            a = self.active.get(name)
            if a is None or (not a.chunks and not a.outcomes):
                continue
            ref = a.writer.take.remote(a.chunks, a.outcomes, *a.payloads)
            self._call(a, "take", ref, chunks=len(a.chunks))
            a.chunks, a.payloads, a.outcomes = [], [], []
            self._maybe_finish_unit(a)
        self.dirty.clear()

    def _maybe_finish_unit(self, a: _Active) -> None:
        if a.left == 0 and not a.todo and not a.finishing and not a.busy and not a.outcomes and not a.chunks:
            a.finishing = True
            self._call(a, "finish", a.writer.finish_in_background.remote())

    def _call_done(self, ref, what: str, name: str, writer, chunks: int) -> None:
        self.chunks_in_flight -= chunks
        a = self.active.get(name)
        if a is None or a.writer is not writer:
            return None  # an answer of a writer this unit no longer has
        try:
            result = self._get(ref)
        except ray.exceptions.RayError as exc:
            return self._writers_lost(writer, exc)
        if what == "begin":
            a.spool = result
        elif what == "resume":
            self._resumed(a, set(result))
        elif what == "finish":  # the writer commits in the background and is free for the next unit
            a.committing = True
            if self.nodes.is_usable(a.node.id):  # not on a node that is draining or gone
                self.idle_writers.append((a.writer, a.node))
            self._call(a, "commit", a.writer.committed.options(concurrency_group="commit").remote(a.unit.name))
        elif what == "commit":
            del self.active[name]
            self.done(a.unit, result)
            if not self.nodes.is_usable(a.node.id) and not self._holds_unit(a.writer):
                self._retire(a.writer, a.node)
        return None

    def _writers_lost(self, writer, exc: Exception) -> None:
        """A writer failed: each unit it held is taken over (see `_take_over`); a failure of the
        output itself (e.g. a folder that cannot be written) stops the build."""
        kind = _kind(exc)
        held = [a for a in self.active.values() if a.writer is writer]
        if kind != failures.TRANSIENT:
            stem = held[0].unit.stem if held else "?"
            raise RuntimeError(f"writing shard unit {stem} failed: {_error_text(exc)}") from exc
        ray.kill(writer)
        for node in [n for w, n in self.writers if w is writer]:
            self._forget_writer(writer, node)
            self._gone(exc, node)
        for a in held:
            self._take_over(a, _error_text(exc))

    def _take_over(self, a: _Active, reason: str) -> None:
        """A new writer for a unit whose writer was lost: on the same node it rewrites the unit
        from the spool; with the node gone (or draining) the unit starts over elsewhere; after
        MAX_ATTEMPTS losses its videos not yet complete become transient error rows. A writer
        lost with its node does not count as a loss (up to MAX_NODE_LOSSES times). With no node
        for a new writer the unit waits for one (`_requeue`)."""
        for key in [k for k, v in self.videos.items() if v.unit == a.unit.name]:
            v = self.videos.pop(key)
            self._release(v)
        for ref, what in list(self.refs.items()):
            if what[0] == "call" and what[2] == a.unit.name:
                del self.refs[ref]
                self.chunks_in_flight -= what[4]
        self.chunks_in_flight -= len(a.chunks)
        a.chunks, a.payloads, a.outcomes = [], [], []
        if a.node.leaving and a.node_losses < MAX_NODE_LOSSES:
            a.node_losses += 1
        else:
            a.losses += 1
        a.finishing = a.committing = False
        same_node = a.spool and self.nodes.is_usable(a.node.id)
        if a.losses >= 2 * MAX_ATTEMPTS:  # not even its error rows could be written
            raise RuntimeError(f"writing shard unit {a.unit.stem} failed {a.losses} times: {reason}")
        if a.losses >= MAX_ATTEMPTS:
            log.warning(
                "writing shard unit %s failed %d times (%s): its videos not yet written become transient "
                "error rows (--retry-errors computes them again)",
                a.unit.stem,
                a.losses,
                reason,
            )
            return self._give_up(a, reason)
        got = self._writer(a.node if same_node else None)
        if got is None:
            return self._requeue(a, reason)
        writer, node = got
        a.writer, a.node, a.busy, a.todo = writer, node, True, deque()
        if same_node:
            log.warning(
                "the writer of shard unit %s was lost (%s); a new one takes over its spool (%d of %d)",
                a.unit.stem,
                reason,
                a.losses + 1,
                MAX_ATTEMPTS,
            )
            self._call(a, "resume", writer.resume.remote(a.unit, self.output, self.cfg, a.spool))
        else:
            log.warning(
                "the writer of shard unit %s was lost with its node (%s); the unit starts over (%d of %d)",
                a.unit.stem,
                reason,
                a.losses + 1,
                MAX_ATTEMPTS,
            )
            self._call(a, "begin", writer.begin.remote(a.unit, self.output, self.cfg))
            self._resumed(a, set())
        return None

    def _requeue(self, a: _Active, reason: str) -> None:
        """No node can hold a writer now (the writer nodes went, e.g. all preempted): the unit
        goes back to the front of the queue and starts over when one can, its losses carried;
        the build waits for such a node as for any it lacks (up to min_wait_s, asking the
        autoscaler)."""
        log.warning(
            "the writer of shard unit %s was lost (%s) and no node can hold a writer now: the unit waits for one",
            a.unit.stem,
            reason,
        )
        del self.active[a.unit.name]
        self.pending.appendleft(a.unit)
        self.carried[a.unit.name] = (a.losses, a.node_losses)

    def _resumed(self, a: _Active, complete: set[str]) -> None:
        """The new writer holds the videos `complete`: the others of the unit are computed again."""
        a.busy = False
        a.todo = deque(r for r in a.unit.compute_refs if r.key not in complete)
        a.left = len(a.todo)
        self._maybe_finish_unit(a)

    def _give_up(self, a: _Active, reason: str) -> None:
        """Commit the unit with its videos not yet written as transient error rows."""
        got = self._writer()
        if got is None:
            raise RuntimeError(f"writing shard unit {a.unit.stem} failed ({reason}) and no node is left for a writer")
        writer, node = got
        a.writer, a.node, a.todo, a.left, a.busy = writer, node, deque(), 0, False
        for ref in a.unit.compute_refs:
            self._report(ref, "error")
        self._call(a, "begin", writer.begin.remote(a.unit, self.output, self.cfg))
        self._call(a, "give_up", writer.give_up.remote(f"writer lost ({reason})"))
        self._maybe_finish_unit(a)
