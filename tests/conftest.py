"""Shared fixtures: loopback-only Ray, synthetic videos with known motion."""
from __future__ import annotations

import os
import shutil
import tempfile

# Ray must bind to loopback only; this has to be set before Ray starts anywhere in the session.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import pytest  # noqa: E402

from pipeline.synthetic import motion as synthetic  # noqa: E402


def pytest_report_header(config):
    """Name the free disk space where tests write: a full disk fails tests far from the cause."""
    free = shutil.disk_usage(tempfile.gettempdir()).free
    return f"free disk space in {tempfile.gettempdir()}: {free / 2**30:.1f} GiB"


@pytest.fixture(scope="session")
def motion_videos(tmp_path_factory):
    """A folder-per-class dataset: 4 motion classes x 2 videos, 12 frames of 64x48, 2 px/frame."""
    root = tmp_path_factory.mktemp("motion_videos")
    return synthetic.make_motion_dataset(root, per_class=2, num_frames=12, size=(64, 48), speed=2.0)


@pytest.fixture(scope="session")
def ray_local():
    """One small local Ray for the whole session (num_cpus=2, loopback)."""
    import ray

    if not ray.is_initialized():
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
                 runtime_env={"env_vars": {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}})
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def torch_one_thread():
    """One intra-op thread keeps CPU steps steady when other processes share the cores
    (OpenMP threads stall at every barrier while one of them is descheduled)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
