"""Where and how wide a build runs on Ray: its settings, starting or joining Ray, and the GPUs
a cluster offers."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import ray

from pipeline.cluster.env import forwarded_env

log = logging.getLogger(__name__)


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
    # CPU builds: each video runs as fused tasks (plan, decode, flow, encode in one process;
    # `Scheduler._fused_parts`); False: the split path (probe, decode and flow tasks).
    fused: bool = True
    flow_actors: int = 0  # > 0: flow runs in this many actors (GPU builds); -1: one per GPU
    actor_gpus: float = 0.0  # GPUs per flow actor (fractions allowed)
    actor_resource: str | None = None  # custom resource that routes flow actors to their nodes
    # Chunks per actor call. The actor batches pairs across every call it holds, so one chunk
    # per call loses nothing and lets each chunk go to encoding as soon as its pairs are done.
    chunks_per_call: int = 1
    actor_concurrency: int = 64  # calls one flow actor holds at once (their pairs fill its batches)
    # The cluster's size before the build starts (`wait_for_cluster`), and how long to wait for
    # it, for GPU nodes that flow actors need, or for nodes offering `writer_resource`.
    min_nodes: int = 0
    min_cpus: int = 0
    min_gpus: float = 0.0
    min_wait_s: float = 900.0  # cloud GPU nodes take minutes to boot and install
    writer_resource: str | None = None  # custom resource that places shard writers (on-demand nodes)
    # What the build asks of the autoscaler while it runs: a CPU per video left and a flow actor
    # per `VIDEOS_PER_ACTOR` videos left (`pipeline.cluster.nodes`), up to these.
    request_cpus: int = 4096
    request_actors: int = 64
    refresh_s: float = 2.0  # how often the driver reads the cluster's nodes (joined, left)

    def __post_init__(self) -> None:
        if self.flow_actors < -1 or self.actor_gpus < 0 or self.chunks_per_call < 1 or self.actor_concurrency < 1:
            raise ValueError("flow_actors, actor_gpus must be >= 0; chunks_per_call, actor_concurrency >= 1")
        if not 0 <= self.decode_cpus <= 16:
            raise ValueError(f"decode_cpus must be in [0, 16], got {self.decode_cpus}")
        for name in ("max_videos", "max_chunks", "max_writers"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        for name in ("min_nodes", "min_cpus", "min_gpus", "min_wait_s", "request_cpus", "request_actors"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.refresh_s <= 0:
            raise ValueError(f"refresh_s must be > 0, got {self.refresh_s}")


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
        ray.init(
            address="local",
            num_cpus=cfg.num_cpus,
            include_dashboard=False,
            log_to_driver=False,
            # Ray's own INFO and WARNING lines (the instance started, its token) are not the
            # user's business for a private loopback instance; its errors still show.
            logging_level=logging.ERROR,
            _system_config=local_system_config(cfg.num_cpus or os.cpu_count() or 1),
        )
    log.info("Ray resources: %s", ray.cluster_resources())


def local_system_config(cpus: int) -> dict:
    """Ray settings of the embedded instance a build starts: only what the build uses.

    A private loopback instance is read by nobody but this driver, so the per-process work
    that serves observers goes: metrics every worker and agent export every few seconds, and
    task events (the state API's and `ray timeline`'s record of every task) sent to the GCS.
    A cluster a user started with `ray start` keeps what it has (these apply only here).
    """
    return {
        "num_workers_soft_limit": idle_worker_limit(cpus),
        "enable_metrics_collection": False,
        "task_events_report_interval_ms": 0,
    }


def idle_worker_limit(cpus: int) -> int:
    """Worker processes a local Ray keeps (idle ones beyond it are killed) for a build on `cpus` CPUs.

    Ray's default keeps as many as there are CPUs and kills the rest after a second. Flow holds
    every CPU of a build, so a decoder, probe or writer idle for a moment was killed and a new
    process started for the next video (about a second of CPU each: 17 % of a 2-CPU build's
    wall time at 340x256). A build runs one fused task per CPU and, for its last videos, one
    decoder per CPU beside the flow tasks: the limit keeps the CPUs' workers and a bounded
    number more (16 at most), not a multiple of the node, so a 96-CPU node keeps 116 worker
    processes, not hundreds.
    """
    return cpus + min(cpus, 16) + 4


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
        if manager is None:
            log.debug("cannot count local GPUs without Ray (it has no GPU accelerator manager)")
            return None
        visible = manager.get_current_process_visible_accelerator_ids()
        return float(len(visible) if visible is not None else manager.get_current_node_num_accelerators())
    except Exception as exc:  # a private Ray API: any change there falls back to asking a started Ray
        log.debug("cannot count local GPUs without Ray (%s)", exc)
        return None
