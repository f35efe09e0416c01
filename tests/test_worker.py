"""The stages (`pipeline.stages`) without Ray: what decode hands to flow, and clips from one decode."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from pipeline import decode, encode
from pipeline.flow.config import FlowConfig
from pipeline.flow.estimators import make_estimator
from pipeline.inputs import discover
from pipeline.stages import chunks, video
from pipeline.stages import plan as planning
from pipeline.stages.config import SampleConfig, WorkerConfig
from pipeline.stages.fields import compute_fields, encode_chunk, flow_bytes


@pytest.fixture(scope="module")
def ref(motion_videos):
    return next(r for r in discover(str(motion_videos))[0] if r.label == "right")


def _jobs(ref, cfg):
    items = list(chunks.video_jobs(ref, cfg))
    assert isinstance(items[0], planning.VideoPlan), items[0]
    return items[0], items[1:]


def test_decode_sends_luma_and_encoded_frames(ref):
    cfg = WorkerConfig(decode=decode.DecodeConfig(resize="none"), flow=FlowConfig(algorithm="farneback"),
                       sample=SampleConfig(chunk_frames=5))
    _, jobs = _jobs(ref, cfg)
    planes = [f for f, _ in decode.iter_planes(ref.uri, cfg.decode)]
    assert [(j.start, j.owned, j.last) for j in jobs] == [(0, 5, False), (5, 5, False), (10, 2, True)]
    for j in jobs:
        assert j.frames.dtype == np.uint8 and j.frames.shape == (len(j.frame_ids), 48, 64)  # luma only
        for row, f in enumerate(j.frame_ids):
            np.testing.assert_array_equal(j.frames[row], decode.split_planes(planes[f])[0])
        assert j.frame_index == tuple(range(j.start, j.start + j.owned)) and len(j.frame_bytes) == j.owned
        assert encode.decode_rgb(j.frame_bytes[0]).shape == (48, 64, 3)
        prev, nxt = chunks.flow_inputs(j, 1)
        assert len(prev) == len(j.fields) and np.shares_memory(prev, j.frames) and np.shares_memory(nxt, j.frames)
    assert [t for j in jobs for t in j.fields] == list(range(11))


def test_rgb_estimators_get_rgb(ref):
    cfg = WorkerConfig(decode=decode.DecodeConfig(resize="none"),
                       flow=FlowConfig(algorithm="raft_small", backend="torch"), sample=SampleConfig(chunk_frames=8))
    _, jobs = _jobs(ref, cfg)
    rgb = [f for f, _ in decode.iter_frames(ref.uri, decode.DecodeConfig(resize="none"))]
    prev, nxt = chunks.flow_inputs(jobs[0], 1)
    assert prev.shape == (8, 48, 64, 3) and nxt.shape == (8, 48, 64, 3)
    assert np.abs(prev.astype(int) - np.stack(rgb[:8])).mean() < 4  # colour, not grey repeated
    assert np.abs(prev[..., 0].astype(int) - prev[..., 2]).mean() > 5


@pytest.mark.parametrize("algorithm, backend", [("tvl1", "opencv"), ("farneback", "opencv"), ("dis", "opencv"),
                                                ("tvl1", "torch")])
def test_estimators_say_what_they_take(algorithm, backend):
    cfg = FlowConfig(algorithm=algorithm, backend=backend)
    assert make_estimator(cfg).input == cfg.input == "gray"


def test_batches_across_jobs_give_the_fields_of_each(ref):
    cfg = WorkerConfig(decode=decode.DecodeConfig(resize="none"), flow=FlowConfig(algorithm="farneback", batch_size=3),
                       sample=SampleConfig(chunk_frames=4))
    _, jobs = _jobs(ref, cfg)
    est = make_estimator(cfg.flow)
    together = compute_fields(jobs, est, cfg.flow)
    for job, fields in zip(jobs, together):
        np.testing.assert_array_equal(fields, compute_fields([job], est, cfg.flow)[0])
        assert encode_chunk(job, fields, cfg).flow_bytes == flow_bytes(job, est, cfg)


def _counting(monkeypatch):
    calls = []
    real = decode.iter_planes

    def counted(*args, **kwargs):
        calls.append(args[0])
        return real(*args, **kwargs)

    monkeypatch.setattr(decode, "iter_planes", counted)
    monkeypatch.setattr(planning, "count_frames", lambda *a: pytest.fail("clips mode counted frames in a pass"))
    return calls


def test_clips_decode_once(ref, monkeypatch):
    cfg = WorkerConfig(decode=decode.DecodeConfig(resize="none"), flow=FlowConfig(algorithm="farneback"),
                       sample=SampleConfig(clips=2, clip_len=3))
    calls = _counting(monkeypatch)
    res = video.process_video(ref, cfg)
    assert res.status == "ok" and len(calls) == 1
    meta = encode.load_meta(res.samples[0][encode.META])
    assert [c["frame"] for c in meta["clips"]] == [0, 1]
    assert [f["index"] for f in meta["frames"]] == [1, 9]  # 11 fields: clips start at 0 and 8
    assert [f["from"] for f in meta["flow_fields"]] == [0, 1, 2, 8, 9, 10]


@pytest.mark.parametrize("header", [15, 9])
def test_clips_when_the_header_count_is_wrong(ref, monkeypatch, header):
    """A header that promises more or fewer frames than decode gives: the same bytes as a right
    one, at the cost of a second decode only when the settled clips need frames not held."""
    cfg = WorkerConfig(decode=decode.DecodeConfig(resize="none"), flow=FlowConfig(algorithm="farneback"),
                       sample=SampleConfig(clips=2, clip_len=3))
    right = video.process_video(ref, cfg)
    calls = _counting(monkeypatch)
    monkeypatch.setattr(planning, "expected_frames", lambda info, dcfg: header)
    plan = planning.plan_video(ref, cfg)
    assert plan.total_frames == header
    wrong = video.process_video(ref, cfg)
    assert wrong.status == "ok" and wrong.samples == right.samples
    # Planning only probes; the held frames (clips placed for `header`) miss some of the
    # settled clips' frames, so the video is decoded a second time.
    assert len(calls) == 2


def test_clips_too_short_once_decoded_is_an_error_row(ref, monkeypatch):
    cfg = WorkerConfig(decode=decode.DecodeConfig(resize="none"), flow=FlowConfig(algorithm="farneback"),
                       sample=SampleConfig(clips=1, clip_len=12))
    monkeypatch.setattr(planning, "expected_frames", lambda info, dcfg: 40)  # 12 frames decode
    res = video.process_video(ref, cfg)
    assert res.status == "error" and "too short for --clip-len 12" in res.error and ref.source in res.error
    plan = planning.plan_video(ref, replace(cfg, sample=SampleConfig(clips=1, clip_len=3)))
    assert planning.settle_plan(plan, 40, cfg) is plan
