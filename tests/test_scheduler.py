"""The Ray driver's bounds: object-store use independent of the unit size, writers bounded,
and a driver that makes progress whatever the settings (it never spins)."""
from collections import deque

import pytest

from pipeline import open_dataset
from pipeline.cluster import scheduler, tasks
from pipeline.cluster.executor import RayExecutor
from pipeline.cluster.nodes import GOOD, Node
from pipeline.cluster.startup import RayConfig
from pipeline.records import VideoRef
from pipeline.synthetic import motion
from pipeline.build.config import BuildConfig, ShardConfig
from pipeline.build.run import build_dataset
from pipeline.decode import DecodeConfig
from pipeline.flow.config import FlowConfig
from pipeline.stages.config import SampleConfig, WorkerConfig

ray = pytest.importorskip("ray")


def _cfg(samples, algo="dis", chunk_frames=4):
    return BuildConfig(worker=WorkerConfig(decode=DecodeConfig(resize="none"), flow=FlowConfig(algorithm=algo),
                                           sample=SampleConfig(chunk_frames=chunk_frames)),
                       shard=ShardConfig(max_samples=samples))


def _files(root):
    return {p.relative_to(root): p.read_bytes() for p in root.rglob("*") if p.is_file() and ".flowshard" not in p.parts}


@pytest.fixture
def object_refs(monkeypatch):
    """The most object refs the driver held at once during a build, sampled after every event."""
    peak = [0]
    handle = scheduler.Scheduler._handle

    def counting(self, obj):
        handle(self, obj)
        peak[0] = max(peak[0], len(ray._private.worker.global_worker.core_worker.get_all_reference_counts()))

    monkeypatch.setattr(scheduler.Scheduler, "_handle", counting)
    return peak


@pytest.mark.parametrize("fused", [False, True])
def test_object_store_use_does_not_grow_with_the_unit(motion_videos, tmp_path, ray_local, object_refs, fused):
    """One unit of 8 videos (24 chunks) holds no more objects than 8 units of one video: each
    chunk is released once its writer has it, not when the whole unit is done. A fused video's
    task may hold up to 3 items its driver has not taken yet (its back-pressure), so with 2
    videos at once the driver's count may differ by up to 3 per video beside the split path's 2."""
    peaks, stats = {}, {}
    for samples in (1, 8):
        object_refs[0] = 0
        executor = RayExecutor(max_chunks=2, max_videos=2, fused=fused)
        build_dataset(str(motion_videos), str(tmp_path / str(samples)), _cfg(samples), executor=executor,
                      progress=False)
        peaks[samples], stats[samples] = object_refs[0], dict(executor.stats)
    assert peaks[8] <= peaks[1] + (2 + 3 * 2 if fused else 2), peaks
    assert (stats[8]["fused_videos"] > 0) == fused
    assert stats[8]["peak_chunks"] <= 2 and stats[1]["peak_chunks"] <= 2
    build_dataset(str(motion_videos), str(tmp_path / "local"), _cfg(8), progress=False)
    assert _files(tmp_path / "8") == _files(tmp_path / "local")


def test_writers_are_bounded_copy_only_units_included(motion_videos, tmp_path, ray_local):
    cfg = _cfg(1)
    build_dataset(str(motion_videos), str(tmp_path / "ds"), cfg, progress=False)
    relabelled = tmp_path / "in"  # the same videos under other class names: 8 units to copy
    for p in sorted(motion_videos.glob("*/*.mp4")):
        (relabelled / f"c_{p.parent.name}").mkdir(parents=True, exist_ok=True)
        (relabelled / f"c_{p.parent.name}" / p.name).symlink_to(p)
    (relabelled / "new").mkdir()
    motion.write_video(relabelled / "new" / "x.mp4", motion.moving_frames("up", 12, 48, 64, seed=7))
    executor = RayExecutor(max_writers=2)
    summary = build_dataset(str(relabelled), str(tmp_path / "ds"), cfg, executor=executor, progress=False)
    assert summary.ok == 9 and summary.reused == 8 and summary.computed == 1
    assert executor.stats["peak_writers"] <= 2 and executor.stats["writers"] <= 2


@pytest.mark.timeout(300)
def test_the_driver_progresses_when_the_actor_queue_cannot_fill_a_batch(motion_videos, tmp_path, ray_local):
    """Flow actors take batches of 4 chunks, but at most 2 chunks may be in flight and the
    actors hold every CPU: the driver must send part batches and not wait on encode tasks that
    could never be placed."""
    executor = RayExecutor(flow_actors=2, chunks_per_call=4, max_chunks=2, max_videos=1)
    summary = build_dataset(str(motion_videos), str(tmp_path / "ray"), _cfg(3), executor=executor, progress=False)
    assert summary.ok == 8
    build_dataset(str(motion_videos), str(tmp_path / "local"), _cfg(3), progress=False)
    assert _files(tmp_path / "ray") == _files(tmp_path / "local")


def _flaky_plan(marker_dir, failures_before_success):
    """A `_plan` task that fails with a dropped connection the first N times for one video."""
    @ray.remote(num_cpus=0.1)
    def plan(ref, cfg):
        import errno
        import uuid
        from pathlib import Path

        if ref.key == "left_v_left_g00":
            tries = list(Path(marker_dir).iterdir())
            Path(marker_dir, uuid.uuid4().hex).touch()
            if len(tries) < failures_before_success:
                raise ConnectionResetError(errno.ECONNRESET, "connection reset by peer")
        return tasks.plan_video(ref, cfg)

    return plan


@pytest.mark.parametrize("fails", [1, 5])
def test_transient_failures_are_retried_within_the_build(motion_videos, tmp_path, ray_local, monkeypatch, fails):
    (tmp_path / "tries").mkdir()
    monkeypatch.setattr(tasks, "_plan", _flaky_plan(str(tmp_path / "tries"), fails))
    summary = build_dataset(str(motion_videos), str(tmp_path / "ds"), _cfg(3), executor=RayExecutor(),
                            progress=False)
    tries = len(list((tmp_path / "tries").iterdir()))
    rows = {v.video_id: v for v in open_dataset(tmp_path / "ds").videos(include_errors=True)}
    if fails == 1:  # lost once, then done: the version holds the video
        assert summary.ok == 8 and tries == 2
        assert rows["left_v_left_g00"].status == "ok"
    else:  # still failing after every try: an error row that says it may pass another time
        assert summary.ok == 7 and tries == scheduler.MAX_ATTEMPTS
        row = rows["left_v_left_g00"]
        assert (row.status, row.error_kind) == ("error", "transient") and "connection reset" in row.error


@pytest.mark.timeout(400)
def test_one_cpu_and_a_flow_actor_still_finish(motion_videos, tmp_path):
    """`flowshard build --num-cpus 1 --flow-actors 1` in a fresh process (its own Ray): the actor
    may not take the only CPU from the encode tasks, and a part batch must still be sent."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(PYTHONPATH=str(repo), RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0")
    proc = subprocess.run([sys.executable, "-m", "jobs.cli", "build", str(motion_videos), str(tmp_path / "ds"),
                           "--flow", "dis", "--resize", "none", "--num-cpus", "1", "--flow-actors", "1",
                           "--no-progress"], cwd=repo, env=env, capture_output=True, text=True, timeout=360)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "8 of 8 videos ok" in proc.stdout


@pytest.fixture(scope="module")
def longer_videos(tmp_path_factory):
    """8 videos of 48 frames (64x48): 12 chunks of 4 each, so fused tasks are still running
    when the split videos start."""
    root = tmp_path_factory.mktemp("longer_videos")
    for i, m in enumerate(("left", "right", "up", "down") * 2):
        (root / m).mkdir(exist_ok=True)
        motion.write_video(root / m / f"v{i}.mp4", motion.moving_frames(m, 48, 48, 64, seed=i))
    return root


def test_fused_videos_while_others_wait_then_split_ones_and_the_same_bytes(longer_videos, tmp_path, ray_local):
    """A CPU build runs a video as one task while at least a CPU's worth of videos wait to start
    (8 videos on 2 CPUs: the first 6), the last ones on the split path; the shards are those of
    an all-split build and of the in-process build, byte for byte. The bound on chunks in
    flight is at its smallest (the next test checks the rule that keeps that from hanging)."""
    cfg = _cfg(3)
    fused, split = RayExecutor(max_chunks=2), RayExecutor(fused=False)
    build_dataset(str(longer_videos), str(tmp_path / "fused"), cfg, executor=fused, progress=False)
    build_dataset(str(longer_videos), str(tmp_path / "split"), cfg, executor=split, progress=False)
    build_dataset(str(longer_videos), str(tmp_path / "local"), cfg, progress=False)
    assert fused.stats["fused_videos"] == 8 - int(ray.cluster_resources()["CPU"]) and split.stats["fused_videos"] == 0
    assert _files(tmp_path / "fused") == _files(tmp_path / "split") == _files(tmp_path / "local")
    assert sum(fused.placement["flow"].values()) == sum(split.placement["flow"].values()) == 96  # 12 chunks x 8


class _Submitted:
    """A stand-in remote function: counts the tasks submitted, starts nothing."""

    def __init__(self) -> None:
        self.calls = 0

    def options(self, **_):
        return self

    def remote(self, *_):
        self.calls += 1
        return object()


def test_split_videos_start_only_where_a_cpu_is_free_of_fused_tasks(monkeypatch):
    """A fused task waiting for its chunk to be taken (the bound on chunks in flight) holds its
    CPU, and a split video's chunks fill that bound waiting for flow tasks: with every CPU of a
    node held by fused tasks, the two waited on each other (a 2-CPU build of 8 x 150-frame
    videos hung). A split video starts only where a CPU is free of fused tasks, and no fused
    task starts beside an open split video."""
    plans, fused = _Submitted(), _Submitted()
    monkeypatch.setattr(scheduler.tasks, "_plan", plans)
    monkeypatch.setattr(scheduler.tasks, "_video", fused)
    s = scheduler.Scheduler.__new__(scheduler.Scheduler)
    node = Node(id="ab" * 28, address="a", resources={"CPU": 2}, state=GOOD)
    s.nodes = scheduler.NodeTable(checked=False)
    s.nodes.nodes = {node.id: node}
    s.rcfg, s.cfg_ref, s.tries, s.max_videos, s.decoding = RayConfig(), None, 0, 8, 0
    s.videos, s.refs, s.gens, s.stats = {}, {}, {}, {"fused_videos": 0}
    unit = scheduler._Active(unit=type("U", (), {"name": "u"})(), writer=None, node=node, todo=deque(), left=0)
    s.active = {"u": unit}

    def start(todo: int, waiting_after: int) -> tuple[int, int]:
        unit.todo = deque(VideoRef(key=f"k{s.tries + i}", uri="", source="", label="", label_id=0)
                          for i in range(todo))
        s.videos_left = len(s.videos) + todo + waiting_after
        s._start_videos()
        return fused.calls, plans.calls

    assert start(todo=2, waiting_after=4) == (2, 0) and node.fused == 2  # videos wait: fused, both CPUs held
    assert start(todo=1, waiting_after=0) == (2, 0) and len(unit.todo) == 1  # split, but no CPU is free of them
    s._release(next(v for v in s.videos.values() if v.fused))  # a fused task ended
    assert start(todo=1, waiting_after=0) == (2, 1) and node.split == 1
    assert start(todo=1, waiting_after=4) == (2, 2)  # a retried video beside an open split one: split too
