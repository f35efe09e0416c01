"""The Ray driver's bounds: object-store use independent of the unit size, writers bounded,
and a driver that makes progress whatever the settings (it never spins)."""
from collections import deque

import pytest

from pipeline import open_dataset
from pipeline.cluster import scheduler, tasks
from pipeline.cluster.executor import RayExecutor
from pipeline.cluster.nodes import GOOD, Node
from pipeline.cluster.startup import RayConfig
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
    monkeypatch.setattr(tasks, "_plan", _flaky_plan(str(tmp_path / "tries"), fails))  # the split path's probe
    summary = build_dataset(str(motion_videos), str(tmp_path / "ds"), _cfg(3), executor=RayExecutor(fused=False),
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
    (8 videos on 2 CPUs: the first 7), the last as 2 tasks that share its chunks; the shards
    are those of an all-split build and of the in-process build, byte for byte."""
    cfg = _cfg(3)
    fused, split = RayExecutor(max_chunks=2), RayExecutor(fused=False)
    build_dataset(str(longer_videos), str(tmp_path / "fused"), cfg, executor=fused, progress=False)
    build_dataset(str(longer_videos), str(tmp_path / "split"), cfg, executor=split, progress=False)
    build_dataset(str(longer_videos), str(tmp_path / "local"), cfg, progress=False)
    assert (fused.stats["fused_videos"], fused.stats["fused_tasks"], split.stats["fused_videos"]) == (8, 9, 0)
    assert _files(tmp_path / "fused") == _files(tmp_path / "split") == _files(tmp_path / "local")
    assert sum(fused.placement["flow"].values()) == sum(split.placement["flow"].values()) == 96  # 12 chunks x 8


@pytest.mark.parametrize("cpus, waiting, expected", [(2, 8, 1), (2, 3, 1), (2, 2, 1), (2, 1, 2), (16, 4, 4),
                                                    (16, 1, 16), (16, 32, 1)])
def test_the_last_videos_are_shared_over_the_cpus_the_others_free(cpus, waiting, expected):
    """One fused task per video while videos wait; the last ones as cpus // videos left tasks."""
    s = scheduler.Scheduler.__new__(scheduler.Scheduler)
    s.cfg, s.rcfg = _cfg(1), RayConfig()
    s.videos, s.videos_left = {"running": None}, waiting + 1
    node = Node(id="ab" * 28, address="a", resources={"CPU": cpus}, state=GOOD)
    assert s._fused_parts(node) == expected
    s.rcfg = RayConfig(fused=False)
    assert s._fused_parts(node) == 0  # the split path
    s.rcfg = RayConfig(flow_actors=1)
    assert s._fused_parts(node) == 0  # GPU builds: flow actors batch chunks across videos
    s.rcfg, s.cfg = RayConfig(), BuildConfig(worker=WorkerConfig(sample=SampleConfig(clips=2)))
    assert s._fused_parts(node) == 1  # a clips-mode video is one job


@pytest.mark.parametrize("node_lost", [False, True])
def test_tries_lost_with_their_node_do_not_count_against_the_video_but_are_bounded(node_lost):
    """A try lost with its node (gone, or draining: a spot preemption) starts the video again
    without using one of its MAX_ATTEMPTS tries, up to MAX_NODE_LOSSES times; then, and for
    any other transient failure, the tries count and the last one is the video's error row."""
    from collections import Counter

    from pipeline import failures
    from pipeline.records import VideoRef

    s = scheduler.Scheduler.__new__(scheduler.Scheduler)
    s.retries, s.node_losses, s.gens, s.videos = Counter(), Counter(), {}, {}
    s.active = {"u": scheduler._Active(unit=None, writer=None, node=None, todo=deque(), left=1)}
    rows = []
    s._maybe_finish = lambda v: rows.append((v.failure, v.kind))
    node = Node(id="cd" * 28, address="a", resources={"CPU": 2}, state=GOOD, draining=node_lost)
    ref = VideoRef(key="v", uri="/v.mp4", source="v.mp4", label="a", label_id=0)
    tries = 0
    while not rows:
        tries += 1
        s.videos["v"] = v = scheduler._Video(ref=ref, unit="u", node=node, decoding=False, gen_done=True)
        s._fail(v, "v.mp4: lost", failures.TRANSIENT, node_lost=node_lost)
    assert tries == scheduler.MAX_ATTEMPTS + (scheduler.MAX_NODE_LOSSES if node_lost else 0)
    assert rows == [("v.mp4: lost", failures.TRANSIENT)]
    assert len(s.active["u"].todo) == tries - 1  # every other try was queued again


def test_an_actor_error_that_says_preempted_marks_its_node_gone():
    """Ray marks an actor error `preempted` when the autoscaler drained its node for a
    preemption: the node leaves the table then (work lost with it does not count as a try),
    while an actor error without it (a crashed process) leaves the node in place."""
    s = scheduler.Scheduler.__new__(scheduler.Scheduler)
    s.actors, s.idle_writers, s.writers, s.active = [], [], [], {}
    node = Node(id="ef" * 28, address="a", resources={"CPU": 2}, state=GOOD)
    crashed = ray.exceptions.ActorDiedError()
    s._gone(crashed, node)
    assert node.alive and not crashed.preempted
    preempted = ray.exceptions.ActorDiedError()
    preempted._preempted = True  # what Ray sets from the node's death info (AUTOSCALER_DRAIN_PREEMPTED)
    s._gone(preempted, node)
    assert not node.alive
