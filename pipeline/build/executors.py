"""Executors run a build's units and report each one done; the local one runs them here.

`LocalExecutor` runs every unit in this process, one video at a time; the Ray executor
(`pipeline.cluster.executor.RayExecutor`) runs them on local or remote Ray.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Protocol

from pipeline import failures
from pipeline.build import versions as version
from pipeline.build.config import BuildConfig
from pipeline.build.records import UnitRecord
from pipeline.build.units import Unit, write_unit
from pipeline.flow.estimators import FlowEstimator, make_estimator
from pipeline.records import VideoRef, VideoResult
from pipeline.stages.video import process_video
from pipeline.storage import Location

log = logging.getLogger(__name__)


class Executor(Protocol):
    """Runs units and calls `done(unit, record)` as each finishes (in any order)."""

    def prepare(self, input_path: str, refs: list[VideoRef], output: Location, cfg: BuildConfig) -> None:
        """Before any work: refuse (RuntimeError) a build the machines it runs on cannot do right."""

    def run(
        self,
        units: list[Unit],
        cfg: BuildConfig,
        output: str,
        done: Callable[[Unit, UnitRecord], None],
        progress: Progress,
    ) -> None: ...


class LocalExecutor:
    """Runs every unit in this process, one video at a time (debugging, tests, tiny inputs)."""

    def prepare(self, input_path, refs, output, cfg) -> None:
        """Nothing to check: this process reads the inputs and writes the output itself."""

    def run(self, units, cfg, output, done, progress) -> None:
        estimators: list[FlowEstimator] = []  # built on first use: a build that only copies stored samples needs none

        def results(unit: Unit):
            for ref in unit.compute_refs:
                estimators[:] = estimators or [make_estimator(cfg.worker.flow)]
                res = _process_with_retries(ref, cfg, estimators[0])
                progress.video_done(res)
                yield res

        for unit in units:
            done(unit, write_unit(unit, results(unit), output, cfg))


def _process_with_retries(ref: VideoRef, cfg: BuildConfig, estimator) -> VideoResult:
    """`process_video`, tried again (up to failures.MAX_ATTEMPTS) while it fails transiently."""
    for attempt in range(1, failures.MAX_ATTEMPTS + 1):
        res = process_video(ref, cfg.worker, estimator)
        if res.status == "ok" or res.error_kind != failures.TRANSIENT or attempt == failures.MAX_ATTEMPTS:
            break
        log.warning("%s; transient, trying again (%d of %d)", res.error, attempt + 1, failures.MAX_ATTEMPTS)
    content = version.fetched_sha256(ref.uri) if res.status == "ok" else ""
    return replace(res, stats={**res.stats, "content_sha256": content}) if content else res


class Progress:
    """Progress bar with videos/s, frame pairs/s and ETA (tqdm), also logged at the end."""

    def __init__(self, total_videos: int, enabled: bool = True) -> None:
        from tqdm import tqdm

        self.bar = tqdm(total=total_videos, unit="video", disable=not enabled, dynamic_ncols=True)
        self.t0 = time.perf_counter()
        self.pairs = 0
        self.errors = 0

    def video_done(self, res: VideoResult) -> None:
        self.pairs += res.flow_fields
        self.errors += res.status != "ok"
        elapsed = max(1e-9, time.perf_counter() - self.t0)
        self.bar.set_postfix(pairs_s=f"{self.pairs / elapsed:.1f}", errors=self.errors, refresh=False)
        self.bar.update(1)

    def close(self) -> None:
        self.bar.close()


EXECUTORS = ("ray", "local")  # make_executor's kinds


def make_executor(kind: str, *, address: str | None = None, num_cpus: int | None = None, **ray_kwargs) -> Executor:
    """Explicit factory: "local" runs in this process, "ray" on local or remote Ray."""
    if kind == "local":
        return LocalExecutor()
    if kind == "ray":
        from pipeline.cluster.executor import RayExecutor

        return RayExecutor(address=address, num_cpus=num_cpus, **ray_kwargs)
    raise ValueError(f"unknown executor {kind!r}; choose one of {EXECUTORS}")
