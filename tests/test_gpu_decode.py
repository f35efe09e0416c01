"""--gpu-decode: batched JPEG decode and crop/flip/normalize as tensor ops, run here on CPU
tensors and compared with the CPU loader on the same shards (the CUDA run is in
bench/gpu_check.sh; the code is the same, only the device differs)."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from pipeline import encode
from tests.test_training_data import H, LABELS, W, batches, write_dataset
from training import data, gpu_decode
from training.data import DataConfig
from training.transforms import TransformConfig

STEP = 1 / 128  # one quantization level of normalized flow


@pytest.fixture(autouse=True)
def _one_thread(torch_one_thread):
    yield


def textured_sample(key: str, label: str, frames: int, seed: int) -> dict:
    """A video sample whose frames and flow planes are smooth random textures (crops and flips show)."""
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[0:H, 0:W]

    def smooth(phase):
        return (127 + 100 * np.sin(xs / 3.0 + phase) * np.cos(ys / 4.0 - phase)).astype(np.float32)

    rgb = [encode.encode_rgb(np.clip(np.stack([smooth(p), smooth(p + 1), smooth(p + 2)], -1), 0, 255).astype(np.uint8),
                             95) for p in rng.uniform(0, 6, frames)]
    flows = [encode.encode_flow(np.stack([smooth(p) / 12 - 10, 5 - smooth(p + 3) / 20], -1), 20.0, 95)
             for p in rng.uniform(0, 6, frames - 1)]
    meta = {"schema_version": encode.SCHEMA_VERSION, "kind": "video", "video_id": key, "key": key, "part": 0,
            "num_parts": 1, "source": f"{label}/{key}.mp4", "label": label, "label_id": LABELS[label],
            "split": "train", "fps": 25.0, "size": [W, H],
            "frames": [{"index": i, "pts": i / 25} for i in range(frames)],
            "flow_fields": [{"from": i, "to": i + 1} for i in range(frames - 1)],
            "flow": {"algorithm": "farneback", "bound": 20.0, "step": 1}, "rgb": {"codec": "jpg", "quality": 95},
            "mode": "dense", "clips": []}
    return encode.to_sample(key, meta, rgb, flows)


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("gpu_decode")
    samples = [textured_sample(f"v{i}", "abc"[i % 3], 12, i) for i in range(6)]
    return data.open_source(write_dataset(root, {"train-00000.tar": samples[:4], "test-00000.tar": samples[4:]}))


def both_paths(source, split: str, cfg: DataConfig, train: bool, n: int):
    steps = 2 if train else None
    cpu = batches(data.make_loader(source, split, cfg, train=train, steps=steps), n)
    gpu_cfg = dataclasses.replace(cfg, gpu_decode=True)
    dev = batches(data.make_loader(source, split, gpu_cfg, train=train, steps=steps, device="cpu"), n)
    return cpu, dev


@pytest.mark.parametrize("streams", ["both", "flow"])
def test_training_batches_match_the_cpu_loader(shards, streams):
    # Multi-scale crops resized to 16, random flips: the same boxes and flips as the CPU path.
    cfg = DataConfig(streams=streams, clip_len=3, rgb_frames=2, sampler="simonyan", batch_size=2, workers=0,
                     shuffle_buffer=4, seed=3, transform=TransformConfig(crop_size=16))
    cpu, dev = both_paths(shards, "train", cfg, train=True, n=2)
    for a, b in zip(cpu, dev):
        assert a["key"] == b["key"] and a["clip"] == b["clip"] and torch.equal(a["label"], b["label"])
        assert a["flow"].shape == b["flow"].shape == (2, 1, 1, 6, 16, 16)
        diff = (a["flow"] - b["flow"]).abs()
        assert diff.max() <= 2 * STEP + 1e-6 and diff.mean() < STEP / 2
        # A flipped item has its x channels negated: the signs of the mean x flow agree.
        assert torch.equal(torch.sign(a["flow"][:, :, :, 0::2].mean((3, 4, 5))),
                           torch.sign(b["flow"][:, :, :, 0::2].mean((3, 4, 5))))
        if streams == "both":
            assert a["rgb"].shape == b["rgb"].shape == (2, 1, 1, 6, 16, 16)
            assert (a["rgb"] - b["rgb"]).abs().max() < 3 / 255 / 0.224
    assert b["flow"].dtype == torch.float32


def test_ten_crop_evaluation_matches_the_cpu_loader(shards):
    cfg = DataConfig(clip_len=3, sampler="simonyan", test_clips=2, batch_size=2, workers=0,
                     transform=TransformConfig(crop_size=28, test_crops=10))  # 21 px boxes (0.875 x 24) resized up
    cpu, dev = both_paths(shards, "test", cfg, train=False, n=1)
    a, b = cpu[0], dev[0]
    assert a["rgb"].shape == b["rgb"].shape == (2, 10, 1, 3, 28, 28)
    assert (a["flow"] - b["flow"]).abs().max() <= 2 * STEP + 1e-6
    assert (a["rgb"] - b["rgb"]).abs().max() < 3 / 255 / 0.224
    # Views 5..9 mirror views 0..4 with x negated.
    torch.testing.assert_close(b["flow"][:, 5:, :, 0::2], -b["flow"][:, :5, :, 0::2].flip(-1))


def test_flow_planes_become_interleaved_channels():
    planes = torch.arange(60, dtype=torch.uint8).view(1, 2, 1, 6, 5)  # K=1, L=2, (2H=6, W=5)
    ch = gpu_decode.GpuBatchDecoder._flow_channels(planes)
    assert ch.shape == (1, 4, 3, 5)
    assert torch.equal(ch[0, 0], planes[0, 0, 0, :3]) and torch.equal(ch[0, 1], planes[0, 0, 0, 3:])
    assert torch.equal(ch[0, 2], planes[0, 1, 0, :3]) and torch.equal(ch[0, 3], planes[0, 1, 0, 3:])
