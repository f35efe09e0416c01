"""Ray's side of the stages: the remote functions and the flow actor, each a thin wrapper
around `pipeline.stages` (which stays Ray-free and testable without Ray).

Per video, on CPU builds while other videos wait to start: one `_video` generator task probes,
decodes, computes flow and encodes it in one process, so frames never cross the object store
(the fused path). Otherwise (the build's last videos, whose chunks should spread over every
CPU, and GPU builds): a small `_plan` task probes it (fetching a remote input into its node's
cache); a `_decode` generator task on the same node streams its frames in chunks; each chunk
goes to a `_flow` CPU task (flow + encode) or, on GPU builds, to a `FlowActor` (flow only,
batched across videos) followed by an `_encode` CPU task. Every chunk result carries the
node ids it ran on, so the driver can report placement.

The remote functions keep their leading underscore: a worker's process title is
`ray::<function name>` (`ray::_flow`, ...), which `ps`, Ray's dashboard and the benchmarks
show and look for, so the names stay what they have always been.

Every task raises what went wrong as `failures.CarriedError`, classified on the worker where
the whole error is known: its reason and kind reach the driver (and the manifest) intact,
whatever the original exception's class (see `pipeline.failures`).
"""

from __future__ import annotations

import functools

import numpy as np
import ray

from pipeline import failures, tools
from pipeline.build import versions as version
from pipeline.cluster import shared_paths
from pipeline.flow.batch import PairBatcher
from pipeline.flow.estimators import make_estimator
from pipeline.records import VideoRef
from pipeline.stages.chunks import ChunkJob, chunk_jobs, pair_rows
from pipeline.stages.config import WorkerConfig
from pipeline.stages.fields import encode_chunk, process_chunk, process_chunks
from pipeline.stages.plan import VideoFailure, VideoPlan, safe_plan
from pipeline.stages.samples import summarize
from pipeline.stages.warped import WarpedFields, warp_inputs

_ESTIMATORS: dict = {}


def _estimator(flow_cfg):
    # One estimator per worker process and config: OpenCV objects are reused between tasks.
    key = repr(flow_cfg)
    if key not in _ESTIMATORS:
        _ESTIMATORS[key] = make_estimator(flow_cfg)
    return _ESTIMATORS[key]


def _node() -> str:
    return ray.get_runtime_context().get_node_id()


def plan_video(ref: VideoRef, cfg: WorkerConfig):
    """The video's plan (or VideoFailure), the node that made it, and the input's sha256 if fetched."""
    # The node rides along: the decoder runs there too, so a remote input fetched into this
    # node's cache for the probe is read from that cache, not fetched again.
    plan = safe_plan(ref, cfg)
    content = "" if isinstance(plan, VideoFailure) else failures.carrying(lambda: version.fetched_sha256(ref.uri))
    return plan, _node(), content


@ray.remote(num_cpus=0.1, max_retries=3)
def _plan(ref: VideoRef, cfg: WorkerConfig):
    """`plan_video` as a small task (the scheduler's `tasks._plan`)."""
    return plan_video(ref, cfg)


def decode_video(ref: VideoRef, plan: VideoPlan, cfg: WorkerConfig):
    """Stage 1: (ChunkJob, node id) per chunk; an error is raised as `failures.CarriedError`."""
    node = _node()
    for job in failures.carrying_iter(chunk_jobs(ref, plan, cfg)):
        yield job, node  # the node rides along so the driver can report placement


@ray.remote(max_retries=3)
def _decode(ref: VideoRef, plan: VideoPlan, cfg: WorkerConfig):
    """`decode_video` as a generator task, streamed while the video decodes."""
    yield from decode_video(ref, plan, cfg)


def video_in_one(ref: VideoRef, cfg: WorkerConfig, part: int = 0, parts: int = 1):
    """Plan, decode, CPU flow and encode of one video in this process: first `plan_video`'s
    result, then per chunk its status (summary, node, node) and its encoded chunk.

    The frames never leave the process (no object-store copy, no decoder process beside the
    flow one). With parts > 1, this task computes every parts-th chunk from `part` on and
    `parts` tasks share the video over as many CPUs: each decodes the whole video (decoding
    costs a few percent of flow), and JPEG-encodes only its own chunks' frames.
    """
    planned = plan_video(ref, cfg)
    yield planned
    plan, node, _ = planned
    if isinstance(plan, VideoFailure):
        return
    estimator = _estimator(cfg.flow)
    mine = None if parts == 1 else (lambda index: index % parts == part)
    for job in failures.carrying_iter(chunk_jobs(ref, plan, cfg, mine)):
        encoded = failures.carrying(functools.partial(process_chunk, job, estimator, cfg))
        yield summarize(encoded), node, node
        yield encoded


@ray.remote(max_retries=3)
def _video(ref: VideoRef, cfg: WorkerConfig, part: int = 0, parts: int = 1):
    """`video_in_one` as a generator task holding one CPU (the scheduler's fused path)."""
    yield from video_in_one(ref, cfg, part, parts)


@ray.remote(num_returns=2, max_retries=3)
def _flow(item: tuple, cfg: WorkerConfig):
    """Stage 2 on a CPU: (summary, decode node, flow node) and the encoded chunk."""
    job, decode_node = item
    encoded = failures.carrying(lambda: process_chunks([job], _estimator(cfg.flow), cfg)[0])
    return (summarize(encoded), decode_node, _node()), encoded


@ray.remote(num_returns=2, max_retries=3)
def _encode(item: tuple, computed: tuple, flow_node: str, cfg: WorkerConfig):
    """Encoding after a flow actor: (summary, decode node, flow node) and the encoded chunk."""
    (job, decode_node), (fields, warped) = item, computed
    encoded = failures.carrying(lambda: encode_chunk(job, fields, cfg, warped))
    return (summarize(encoded), decode_node, flow_node), encoded


@ray.remote(num_cpus=0, max_retries=0)
def _look(checks: list, cfg: WorkerConfig, spool_tag: str = "") -> dict:
    """What one node sees of INPUT and OUTPUT (`shared_paths.look`), its tools and host name;
    first, the spools a dead build of the same OUTPUT left on this node are removed."""
    import socket

    from pipeline.build.assembly import remove_stale_spools

    stale = remove_stale_spools(spool_tag) if spool_tag else 0
    return {
        "failed": shared_paths.look(checks),
        "tools": tools.fingerprint(cfg),
        "host": socket.gethostname(),
        "stale_spools": stale,
    }


def chunk_flow_inputs(job: ChunkJob, flow) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """A chunk's frames in the form the estimator takes (grey or RGB) and its (from, to) pair rows."""
    return job.frames, pair_rows(job, flow.step)


class FlowActor:
    """Holds one estimator (e.g. torch TV-L1 on a GPU) and a `PairBatcher` over it.

    Ray runs several `compute` calls at once (a threaded actor): each queues its chunks' pairs
    and waits, while the batcher's thread fills batches of B pairs across all queued chunks
    of all videos and hands each chunk its uint8 fields (a quarter of float32's bytes through
    the object store).
    """

    def __init__(self, cfg: WorkerConfig) -> None:
        self.cfg = cfg
        self.estimator = make_estimator(cfg.flow)
        self.batcher = PairBatcher(self.estimator, bound=cfg.flow.bound, batch_size=cfg.flow.batch_for)

    def node_id(self) -> str:
        return _node()

    def compute(self, *items: tuple) -> tuple | list[tuple]:
        jobs = [job for job, _ in items]
        plain = [self.batcher.submit(*chunk_flow_inputs(job, self.cfg.flow)) for job in jobs]
        warped = [self._submit_warped(job) for job in jobs]  # None each without --flow-warp
        q = [
            (p.result(), None if w is None else WarpedFields(fields=w[0].result(), cameras=w[1]))
            for p, w in zip(plain, warped, strict=True)
        ]
        # Ray splits a returned list over num_returns refs only when there are several.
        return q[0] if len(q) == 1 else q

    def _submit_warped(self, job: ChunkJob):
        """Queue a chunk's camera-compensated pairs in the same batches: (future, cameras), or None."""
        if self.cfg.warp is None:
            return None
        wi = warp_inputs(job, self.cfg, boxes=job.people)
        n = len(wi.cameras)
        frames = np.concatenate([wi.firsts, wi.seconds]) if n else wi.firsts
        return self.batcher.submit(frames, [(i, n + i) for i in range(n)]), wi.cameras

    def stats(self) -> dict:
        """Batches run and pairs per batch so far."""
        return {
            "batches": self.batcher.stats.batches,
            "pairs": self.batcher.stats.pairs,
            "sizes": list(self.batcher.stats.sizes),
        }
