"""RayExecutor: what the build calls to run its units on Ray (see `pipeline.cluster.tasks` for
the task graph and `pipeline.cluster.scheduler` for the driver loop)."""
from __future__ import annotations

import dataclasses
import logging
from collections import Counter

import ray

from pipeline import storage
from pipeline.build.config import STATE_DIR, BuildConfig
from pipeline.build.units import Unit
from pipeline.cluster import shared_paths, tasks
from pipeline.cluster.scheduler import RunContext, Scheduler
from pipeline.cluster.startup import RayConfig, init_ray
from pipeline.records import VideoRef

log = logging.getLogger(__name__)


class RayExecutor:
    """Runs the build's units on Ray (`pipeline.cluster.tasks` describes the task graph).

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
            affinity = ray.util.scheduling_strategies.NodeAffinitySchedulingStrategy
            looks = ray.get([tasks._look.options(scheduling_strategy=affinity(
                node_id=node, soft=False)).remote(self._view(node, checks), cfg.worker) for node, _ in nodes])
        finally:
            shared_paths.clean(checks)
        for (node, address), seen in zip(nodes, looks, strict=True):
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
        ctx = RunContext(ray_cfg=self.cfg, cfg=cfg, output=output, done=done, progress=progress,
                         placement=self.placement, stats=self.stats)
        Scheduler(ctx).run(units)
