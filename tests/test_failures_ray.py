"""Failures that keep their reason: errors raised in real Ray tasks reach the manifest with
their own message and the right kind (transient: a lost worker, ffmpeg killed, storage
trouble; permanent: the file itself).

Each case runs a real build on the session's Ray, on both paths a video can take: split
(the real `tasks.decode_video`, which `tasks._decode` runs) and fused (the real
`tasks.video_in_one`, which `tasks._video` runs), with the fault injected into the worker
process itself: the decoder of one video raises a mid-stream error, SIGKILLs its own
worker, or has its ffmpeg SIGKILLed the way an out-of-memory killer would.
"""
import pickle
import time

import pytest

from pipeline import failures, open_dataset
from pipeline.build.config import BuildConfig, ShardConfig
from pipeline.build.run import build_dataset
from pipeline.cluster import scheduler, tasks
from pipeline.cluster.executor import RayExecutor
from pipeline.decode import DecodeConfig, DecodeError
from pipeline.flow.config import FlowConfig
from pipeline.stages.config import SampleConfig, WorkerConfig
from pipeline.synthetic import motion

ray = pytest.importorskip("ray")

VICTIM = "victim.mp4"  # long enough that its ffmpeg is still running when the fault comes


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    """Three short videos and the victim, whose 120 frames outgrow the pipe from ffmpeg."""
    root = tmp_path_factory.mktemp("failure_videos")
    for name, n, seed in (("left/a.mp4", 12, 1), ("left/b.mp4", 12, 2), ("right/c.mp4", 12, 3),
                          (f"right/{VICTIM}", 120, 4)):
        (root / name).parent.mkdir(exist_ok=True)
        motion.write_video(root / name, motion.moving_frames(name.split("/")[0], n, 48, 64, seed=seed))
    return root


def _cfg(**worker):
    return BuildConfig(worker=WorkerConfig(decode=DecodeConfig(resize="none"), flow=FlowConfig(algorithm="dis"),
                                           sample=SampleConfig(chunk_frames=4), **worker),
                       shard=ShardConfig(max_samples=4))


def _faulty_decode(how: str, victim: str = VICTIM, body: str = "decode_video"):
    """A `_decode` task (or, with body "video_in_one", a `_video` task) that runs the real
    decoder, with `how` injected into the frames of the video whose path holds `victim`.
    Everything it uses is imported inside: the task runs in a worker process that cannot
    import this test module."""
    @ray.remote(max_retries=0)
    def decode(ref, *args):
        import os
        import signal
        from pathlib import Path

        from pipeline import decode as dec
        from pipeline.cluster import tasks
        from pipeline.decode import DecodeError

        def children(name: str) -> list[int]:
            found = []
            for stat in Path("/proc").glob("[0-9]*/stat"):
                try:
                    text = stat.read_text()
                except OSError:
                    continue
                comm, rest = text[text.index("(") + 1:text.rindex(")")], text[text.rindex(")") + 2:].split()
                if comm.startswith(name) and int(rest[1]) == os.getpid():
                    found.append(int(stat.parent.name))
            return found

        real = getattr(dec, "unpatched_iter_planes", dec.iter_planes)
        dec.unpatched_iter_planes = real

        def planes(uri, dcfg, info=None):
            frames = real(uri, dcfg, info)
            for n, item in enumerate(frames):
                if n == 5 and victim in uri:
                    if how == "decode":
                        raise DecodeError(uri, "corrupt macroblock at frame 5")
                    if how == "storage":  # botocore's error cannot be unpickled on its own
                        from botocore.exceptions import ClientError
                        raise ClientError({"Error": {"Code": "SlowDown", "Message": "Please reduce your request rate"},
                                           "ResponseMetadata": {"HTTPStatusCode": 503}}, "GetObject")
                    if how == "storage-errno":  # a storage error restated with its path: errno set after
                        import errno

                        from pipeline.build.manifest import os_error
                        raise os_error(OSError(errno.EREMOTEIO, "remote I/O error"), f"{uri}: cannot read a block")
                    if how == "worker":
                        os.kill(os.getpid(), signal.SIGKILL)
                    if how == "ffmpeg":  # what the OOM killer does to a decoder: the next read ends
                        for pid in children("ffmpeg"):
                                os.kill(pid, signal.SIGKILL)
                yield item

        dec.iter_planes = planes  # this worker process only, for this task; other videos pass through
        try:
            yield from getattr(tasks, body)(ref, *args)
        finally:
            dec.iter_planes = real

    return decode


CASES = {
    "decode": ("permanent", "corrupt macroblock at frame 5"),
    "storage": ("transient", "SlowDown"),
    "storage-errno": ("transient", "cannot read a block"),
    "worker": ("transient", "WorkerCrashedError"),
    "ffmpeg": ("transient", "ffmpeg exited with code -9"),
}


@pytest.mark.timeout(600)
@pytest.mark.parametrize("path", ["split", "fused"])
@pytest.mark.parametrize("how", sorted(CASES))
def test_errors_of_ray_tasks_keep_reason_and_kind(how, path, videos, tmp_path, ray_local, monkeypatch):
    if path == "fused":  # every video on the fused path, the victim's included
        monkeypatch.setattr(scheduler.Scheduler, "_fused_parts", lambda self, node: 2)  # each video in 2 tasks
        monkeypatch.setattr(tasks, "_video", _faulty_decode(how, body="video_in_one"))
    else:
        monkeypatch.setattr(tasks, "_decode", _faulty_decode(how))
    executor = RayExecutor(fused=path == "fused")
    summary = build_dataset(str(videos), str(tmp_path / "ds"), _cfg(), executor=executor, progress=False)
    fused = executor.stats["fused_videos"]  # tries: a transient failure is tried again
    assert fused >= 4 if path == "fused" else fused == 0
    rows = {v.path: v for v in open_dataset(tmp_path / "ds").videos(include_errors=True)}
    kind, words = CASES[how]
    row = rows[f"right/{VICTIM}"]
    assert (row.status, row.error_kind) == ("error", kind), row
    assert words in row.error and "deserialize" not in row.error, row.error
    assert summary.ok == 3 and all(v.status == "ok" for p, v in rows.items() if p != f"right/{VICTIM}")


def _one_part_fails(marker: str):
    """A `_video` task whose victim's part 0 raises after its first chunk while part 1, slowed
    to 0.1 s an item, goes on and writes `marker` when it has yielded its last item."""
    @ray.remote(max_retries=0)
    def video(ref, cfg, part, parts):
        import time
        from pathlib import Path

        from pipeline.cluster import tasks
        from pipeline.decode import DecodeError

        victim = VICTIM in ref.source
        for n, item in enumerate(tasks.video_in_one(ref, cfg, part, parts)):
            if victim and part == 0 and n == 3:
                raise DecodeError(ref.uri, "corrupt macroblock")
            if victim and part == 1:
                time.sleep(0.1)
            yield item
        if victim and part == 1:
            Path(marker).write_text("ended")

    return video


@pytest.mark.timeout(300)
def test_a_try_given_up_is_let_go_not_cancelled(videos, tmp_path, ray_local, monkeypatch):
    """When one part of a video fails, its other part is neither cancelled (`ray.cancel` racing
    with a task's end kills the driver in Ray 2.60: exit 1, no Python error) nor left hanging on
    its back-pressure: the driver drops every reference to it, and it runs to its end at once."""
    marker = tmp_path / "part1_ended"
    cancels, seen = [], {}
    monkeypatch.setattr(ray, "cancel", lambda *args, **kwargs: cancels.append(args))
    monkeypatch.setattr(scheduler.Scheduler, "_fused_parts", lambda self, node: 2)
    monkeypatch.setattr(tasks, "_video", _one_part_fails(str(marker)))
    real_fail = scheduler.Scheduler._fail

    def fail(self, v, *args, **kwargs):
        real_fail(self, v, *args, **kwargs)
        seen["running when given up"] = not marker.exists()
        deadline = time.monotonic() + 60  # the driver waits here: nothing of it reads part 1
        while not marker.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        seen["ended while the driver waited"] = marker.exists()

    monkeypatch.setattr(scheduler.Scheduler, "_fail", fail)
    build_dataset(str(videos), str(tmp_path / "ds"), _cfg(), executor=RayExecutor(fused=True), progress=False)
    assert cancels == []
    assert seen == {"running when given up": True, "ended while the driver waited": True}
    rows = {v.path: v for v in open_dataset(tmp_path / "ds").videos(include_errors=True)}
    victim = rows[f"right/{VICTIM}"]
    assert (victim.status, victim.error_kind) == ("error", "permanent") and "corrupt macroblock" in victim.error
    assert all(v.status == "ok" for p, v in rows.items() if p != f"right/{VICTIM}")


def test_a_truncated_input_is_a_permanent_row_from_the_real_decode_task(tmp_path, ray_local):
    """A faststart MP4 cut at 60 % of its bytes: the real `_decode` task raises DecodeError at
    the end of the stream, and its reason reaches the manifest."""
    videos = tmp_path / "in" / "left"
    videos.mkdir(parents=True)
    whole = motion.write_video(tmp_path / "whole.mp4", motion.moving_frames("left", 100, 48, 64, seed=1),
                               extra_args=("-movflags", "+faststart"))
    motion.write_truncated(videos / "cut.mp4", whole, 0.6)
    motion.write_video(videos / "fine.mp4", motion.moving_frames("left", 12, 48, 64, seed=2))
    build_dataset(str(tmp_path / "in"), str(tmp_path / "ds"), _cfg(), executor=RayExecutor(), progress=False)
    rows = {v.path: v for v in open_dataset(tmp_path / "ds").videos(include_errors=True)}
    cut = rows["left/cut.mp4"]
    assert (cut.status, cut.error_kind) == ("error", "permanent")
    assert "of 100 declared frames" in cut.error and "deserialize" not in cut.error
    assert rows["left/fine.mp4"].status == "ok"


def test_decode_and_carried_errors_pickle_with_reason_and_kind():
    for exc in (DecodeError("a.mp4", "bad header"), DecodeError("a.mp4", "killed", failures.TRANSIENT),
                failures.CarriedError("x.mp4: lost", failures.TRANSIENT)):
        back = pickle.loads(pickle.dumps(exc))
        assert (type(back), str(back), back.kind) == (type(exc), str(exc), exc.kind)
    assert scheduler.MAX_ATTEMPTS == failures.MAX_ATTEMPTS
