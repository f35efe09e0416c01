"""Pair-level batching in the flow actor, device-side quantization and the staged (overlapped)
path, all on CPU with the torch TV-L1: the CPU twins of the CUDA checks in bench/gpu_check.sh.

The central property: fields computed in batches that mix pairs of several chunks and videos
are byte-identical to computing each chunk on its own.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.synthetic import motion as synthetic
from pipeline.flow.config import FlowConfig
from pipeline.flow.params import TorchOptions, TVL1Params
from pipeline.flow.quantize import DEFAULT_BOUND, quantize
from pipeline.flow.batch import PairBatcher, SyncStages
from pipeline.flow.opencv import DIS
from pipeline.flow.device import quantize_tensor
from pipeline.flow.tvl1_torch import TorchTVL1
from pipeline.stages.chunks import ChunkJob, frames_job, gray
from pipeline.stages.config import WorkerConfig
from pipeline.stages.fields import compute_fields

FAST = TVL1Params(nscales=2, warps=2, outer_iterations=2, inner_iterations=6)


@pytest.fixture(autouse=True)
def _one_thread(torch_one_thread):
    yield


def video_frames(motion: str, n: int, h: int, w: int, seed: int = 0) -> np.ndarray:
    """(n, h, w) grey frames of a moving texture."""
    rgb = synthetic.moving_frames(motion, n, h, w, speed=1.5 + 0.25 * seed)
    return gray(np.stack(list(rgb)))


def test_device_quantize_matches_host_quantize_byte_for_byte():
    rng = np.random.default_rng(0)
    flow = rng.normal(0, 12, (3, 17, 19, 2)).astype(np.float32)
    step = np.float32(2 * DEFAULT_BOUND / 255)
    # Values on and next to the half-level boundaries, where rounding mode matters.
    flow[0, :5, :5, 0] = (np.arange(25).reshape(5, 5) + 0.5) * step - DEFAULT_BOUND
    flow[1, 0, :4, 1] = [-30.0, 30.0, -DEFAULT_BOUND, DEFAULT_BOUND]
    for bound in (DEFAULT_BOUND, 7.5):
        q = quantize_tensor(torch.from_numpy(flow).permute(0, 3, 1, 2), bound).numpy()
        np.testing.assert_array_equal(q, quantize(flow, bound))


def test_staged_path_gives_the_quantized_float_flow():
    frames = video_frames("right", 4, 40, 48)
    prev, nxt = frames[:-1], frames[1:]
    est = TorchTVL1(FAST)
    staged = est.stage(prev, nxt)
    q = est.result(est.launch(staged, 12.0))
    assert q.dtype == np.uint8 and q.shape == (3, 40, 48, 2)
    np.testing.assert_array_equal(q, quantize(est(prev, nxt), 12.0))
    assert est.quantized(prev[:0], nxt[:0]).shape == (0, 40, 48, 2)


def test_pairs_of_many_chunks_and_videos_batch_together_byte_identical_to_unbatched():
    est = TorchTVL1(FAST)
    videos = [video_frames("right", 9, 40, 48), video_frames("down", 6, 40, 48, seed=1),
              video_frames("left", 8, 32, 56, seed=2)]  # two frame sizes
    chunks = [(videos[0], [(r, r + 1) for r in range(5)]), (videos[1], [(r, r + 1) for r in range(5)]),
              (videos[0], [(r, r + 2) for r in range(5, 7)]), (videos[2], [(r, r + 1) for r in range(7)]),
              (videos[1], [])]
    with PairBatcher(est, batch_size=4, linger=0.05) as batcher:
        futures = [batcher.submit(frames, pairs) for frames, pairs in chunks]
        results = [f.result(timeout=120) for f in futures]
    for (frames, pairs), got in zip(chunks, results):
        assert got.shape == (len(pairs),) + frames.shape[1:] + (2,) and got.dtype == np.uint8
        if pairs:
            alone = quantize(est(frames[[a for a, _ in pairs]], frames[[b for _, b in pairs]]))
            np.testing.assert_array_equal(got, alone)
    stats = batcher.stats
    assert stats.pairs == 19 and max(stats.sizes) == 4
    # Pairs were pooled across chunks: fewer batches than one-per-chunk-piece would need.
    assert stats.batches < sum(-(-len(p) // 4) for _, p in chunks)


def test_batch_size_per_frame_size_and_sync_estimators():
    frames = video_frames("up", 7, 24, 32)
    pairs = [(r, r + 1) for r in range(6)]
    est = DIS()
    with PairBatcher(est, batch_size=lambda h, w: 4 if (h, w) == (24, 32) else 1, linger=0.05) as batcher:
        got = batcher.compute(frames, pairs)
    np.testing.assert_array_equal(got, quantize(est(frames[:-1], frames[1:])))
    assert batcher.stats.sizes == [4, 2]
    assert isinstance(batcher.path, SyncStages)


def test_a_failing_batch_fails_its_chunks_and_the_batcher_goes_on():
    class Flaky:
        def __init__(self):
            self.calls = 0

        def __call__(self, prev, nxt):
            self.calls += 1
            if self.calls == 1:
                raise RuntimeError("out of memory (simulated)")
            return np.zeros(prev.shape + (2,), np.float32)

    frames = np.zeros((5, 8, 8), np.uint8)
    with PairBatcher(Flaky(), batch_size=4, linger=0.0) as batcher:
        with pytest.raises(RuntimeError, match="simulated"):
            batcher.compute(frames, [(0, 1), (1, 2)])
        assert (batcher.compute(frames, [(2, 3)]) == 128).all()
    with pytest.raises(ValueError, match="outside"):
        PairBatcher(Flaky()).submit(frames, [(4, 5)])


def test_flow_config_exposes_torch_options_and_default_batch():
    cfg = FlowConfig(backend="torch", torch_options=TorchOptions(compile=1, dtype="bf16", sync_every=0))
    assert cfg.torch_options.compile is True and cfg.output_dict()["dtype"] == "bf16"
    assert "dtype" not in FlowConfig(backend="torch").output_dict()  # fp32 keeps existing version hashes
    assert FlowConfig(backend="torch", device="cpu").batch_for(256, 340) == 16
    assert FlowConfig(backend="torch", device="cuda").batch_for(256, 340) == 126
    assert FlowConfig(backend="torch", batch_size=7).batch_for(256, 340) == 7
    assert FlowConfig(algorithm="raft_small", backend="torch").input == "rgb"
    with pytest.raises(ValueError, match="torch backend"):
        FlowConfig(torch_options=TorchOptions(dtype="fp16"))
    with pytest.raises(ValueError, match="dtype"):
        TorchOptions(dtype="int8")
    with pytest.raises(ValueError, match="sync_every"):
        TorchOptions(sync_every=-1)


def _job(frames_rgb: np.ndarray, key: str, index: int, start: int, owned: int, last: bool) -> ChunkJob:
    return frames_job(frames_rgb, key, index, start, owned, last)


def test_ray_flow_actor_batches_pairs_across_calls_byte_identical(ray_local):
    """Real Ray actors: concurrent calls of chunks of two videos, one actor's batches mix them."""
    import ray

    from pipeline.cluster.tasks import FlowActor

    flow = FlowConfig(backend="torch", params=FAST, batch_size=6)
    cfg = WorkerConfig(flow=flow)
    a = np.stack(list(synthetic.moving_frames("right", 10, 40, 48, speed=1.5)))
    b = np.stack(list(synthetic.moving_frames("down", 7, 40, 48, speed=2.0)))
    jobs = [_job(a[:6], "a", 0, 0, 5, False), _job(a[5:], "a", 1, 5, 5, True), _job(b, "b", 0, 0, 7, True)]
    actor = ray.remote(FlowActor).options(max_concurrency=8).remote(cfg)
    refs = [actor.compute.remote((job, "node")) for job in jobs]
    got = ray.get(refs)
    local = FlowActor(cfg)  # in-process, the same class
    est = TorchTVL1(FAST)
    for job, (fields, warped) in zip(jobs, got):
        unbatched = quantize(compute_fields([job], est, flow)[0], flow.bound)
        np.testing.assert_array_equal(fields, unbatched)
        assert warped is None  # no --flow-warp
        np.testing.assert_array_equal(local.compute((job, "node"))[0], unbatched)
    stats = ray.get(actor.stats.remote())
    assert stats["pairs"] == 5 + 4 + 6 and max(stats["sizes"]) <= 6
    ray.kill(actor)


def test_build_flags_reach_the_flow_config_and_the_actors():
    from click.testing import CliRunner

    from jobs.commands.build import actor_gpus, build_options, make_build_config

    captured = {}

    @build_options
    def fake(**o):
        captured.update(o)

    import click

    CliRunner().invoke(click.command()(fake), ["--flow-backend", "torch", "--flow-param", "compile=1",
                                               "--flow-param", "dtype=bf16", "--flow-param", "warps=3",
                                               "--flow-param", "sync_every=0", "--actors-per-gpu", "2"],
                       catch_exceptions=False)
    flow = make_build_config(captured).worker.flow
    assert flow.torch_options == TorchOptions(compile=True, dtype="bf16", sync_every=0)
    assert flow.params.warps == 3 and flow.batch_size is None
    assert actor_gpus(captured) == 0.5
    with pytest.raises(click.UsageError, match="torch backend"):
        make_build_config({**captured, "flow_backend": "opencv"})
    with pytest.raises(click.UsageError, match="not both"):
        actor_gpus({**captured, "actor_gpus": 0.25})
