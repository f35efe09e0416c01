"""RayExecutor: what the build calls to run its units on Ray (see `pipeline.cluster.tasks` for
the task graph and `pipeline.cluster.scheduler` for the driver loop)."""

from __future__ import annotations

import dataclasses
import logging
from collections import Counter

from pipeline import storage
from pipeline.build.config import STATE_DIR, BuildConfig
from pipeline.build.units import Unit
from pipeline.cluster import shared_paths
from pipeline.cluster.nodes import wait_for_cluster
from pipeline.cluster.scheduler import RunContext, Scheduler
from pipeline.cluster.startup import RayConfig, init_ray
from pipeline.records import VideoRef

log = logging.getLogger(__name__)


class RayExecutor:
    """Runs the build's units on Ray (`pipeline.cluster.tasks` describes the task graph).

    path_view (tests only): (node id, path) -> the path as that node sees it, to play a
    cluster whose nodes do not share a filesystem on one machine.
    """

    def __init__(self, address: str | None = None, num_cpus: int | None = None, *, path_view=None, **kwargs) -> None:
        self.cfg = RayConfig(address=address, num_cpus=num_cpus, **kwargs)
        self.path_view = path_view
        self.placement: dict[str, Counter] = {"decode": Counter(), "flow": Counter()}  # node id -> chunks
        # What the last run held at most: chunks between decoder and writer, writers at once,
        # and the writers' peak resident memory (bytes).
        self.stats: dict[str, int] = {}
        self.input_path: str = ""
        self.refs: list[VideoRef] = []

    def prepare(self, input_path: str, refs: list[VideoRef], output, cfg: BuildConfig) -> None:  # noqa: ARG002 (the Executor protocol's signature)
        """Nothing is refused up front: each node of a cluster is checked the first time it would
        take work (it must see the local INPUT videos and OUTPUT, `pipeline.cluster.shared_paths`,
        and run the tools the version names, `pipeline.tools`); a node that fails gets no work and
        a warning names it. What the checks need is kept for `run`."""
        self.input_path, self.refs = input_path, refs

    def run(self, units: list[Unit], cfg: BuildConfig, output: str, done, progress) -> None:
        if not units:
            return
        init_ray(self.cfg)
        wait_for_cluster(self.cfg)
        # A local Ray is this machine: nothing to check. Any cluster joined by address may have
        # (or gain) nodes that do not share this machine's files or tools.
        checks = None
        if self.cfg.address:
            checks = shared_paths.plan(
                self.refs, storage.location(output), storage.join(storage.location(output), STATE_DIR)
            )
        view = None
        if self.path_view is not None:

            def view(node: str, cs: list) -> list:
                return [dataclasses.replace(c, path=self.path_view(node, c.path)) for c in cs]

        ctx = RunContext(
            ray_cfg=self.cfg,
            cfg=cfg,
            output=output,
            done=done,
            progress=progress,
            placement=self.placement,
            stats=self.stats,
            checks=checks,
            input_path=self.input_path,
            path_view=view,
        )
        try:
            Scheduler(ctx).run(units)
        finally:
            if checks:
                shared_paths.clean(checks)
