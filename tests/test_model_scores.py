"""Every family's logits, scores (and C3D's features) on a fixed seed, pinned.

A small network of each family is built from seed 0 and run, in eval mode, on a fixed
random batch of several items, views and snippets; its outputs must equal the values in
golden_model_scores.json, recorded from the same code. Restructuring a model (how views
and snippets are flattened and averaged, where options are declared) must not change a
single prediction. Regenerate only for an intended change of the models' numbers:
FLOWSHARD_REGEN_SCORES=1 pytest tests/test_model_scores.py.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from training.models import ModelConfig, build_model, c3d, factorized, fstcn, fusion, karpathy, siamese

GOLDEN = Path(__file__).with_name("golden_model_scores.json")
B, V = 2, 2  # items and views of every batch

# name -> (ModelConfig settings, snippets K of the batch, crop side)
CASES = {
    "two_stream-late": ({"arch": "resnet18", "clip_len": 2}, 3, 32),
    "two_stream-conv": ({"arch": "resnet18", "clip_len": 2, "fusion": "conv"}, 2, 32),
    "two_stream-warped": ({"arch": "resnet18", "clip_len": 2, "streams": "rgb,flow,warped"}, 2, 32),
    "fusion-3d": ({"model": "fusion", "arch": "resnet18", "clip_len": 2, "snippets": 2}, 2, 32),
    "fusion-sum-pre-relu": ({"model": "fusion", "arch": "resnet18", "clip_len": 2, "snippets": 2,
                            "options": fusion.Options(fusion_type="sum", fusion_point="pre-relu")}, 2, 32),
    "fusion-none": ({"model": "fusion", "arch": "resnet18", "clip_len": 2, "snippets": 2,
                     "options": fusion.Options(fusion_type="concat", fusion_layer="layer3", temporal_pool="none")},
                    2, 32),
    "st_resnet": ({"model": "st_resnet", "arch": "resnet18", "clip_len": 2, "snippets": 3}, 3, 32),
    "c3d": ({"model": "c3d", "streams": "rgb", "rgb_frames": 16,
             "options": c3d.Options(width_mult=0.125, fc_dim=16, size=16)}, 2, 16),
    "r3d": ({"model": "r3d", "streams": "rgb", "rgb_frames": 4,
             "options": factorized.Options(depth=10, width=4)}, 2, 16),
    "r2plus1d": ({"model": "r2plus1d", "streams": "rgb", "rgb_frames": 4,
                  "options": factorized.Options(depth=10, width=4)}, 2, 16),
    "fstcn": ({"model": "fstcn", "streams": "rgb", "rgb_frames": 3,
               "options": fstcn.Options(frames=2, diff=1, width_mult=0.0625, fc_dims=(16, 8), size=54)}, 2, 54),
    "karpathy-slow": ({"model": "karpathy", "streams": "rgb", "rgb_frames": 10,
                       "options": karpathy.Options(width_mult=0.0625, fc_dim=16, size=44)}, 2, 44),
    "karpathy-late": ({"model": "karpathy", "streams": "rgb", "rgb_frames": 2,
                       "options": karpathy.Options(time_fusion="late", multires=False, width_mult=0.0625,
                                                   fc_dim=16, size=32)}, 2, 32),
    "siamese": ({"model": "siamese", "arch": "resnet18", "clip_len": 2, "snippets": 4,
                 "options": siamese.Options(embed_dim=8)}, 4, 32),
}


@pytest.fixture(scope="module", autouse=True)
def one_thread(torch_one_thread):
    """Every test here runs with one intra-op thread (see conftest.torch_one_thread)."""


def outputs(name: str) -> dict[str, list]:
    """The case's logits, scores and (where the family has them) features, as nested lists."""
    settings, k, size = CASES[name]
    cfg = ModelConfig(num_classes=3, **settings)
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    channels = {"rgb": 3 * cfg.rgb_frames, "flow": 2 * cfg.clip_len, "warped": 2 * cfg.clip_len}
    batch = {s: torch.randn(B, V, k, channels[s], size, size) for s in cfg.stream_names}
    with torch.no_grad():
        logits = model(batch)
        out = {f"logits.{key}": value for key, value in logits.items()}
        out.update({f"scores.{key}": value for key, value in model.scores(logits).items()})
        if cfg.model == "c3d":
            out["features"] = model.features(batch)
    return {key: value.tolist() for key, value in out.items()}


@pytest.fixture(scope="module")
def golden() -> dict:
    if os.environ.get("FLOWSHARD_REGEN_SCORES"):
        GOLDEN.write_text(json.dumps({name: outputs(name) for name in CASES}, indent=1) + "\n")
    return json.loads(GOLDEN.read_text())


@pytest.mark.parametrize("name", sorted(CASES))
def test_family_outputs_equal_the_recorded_ones(name, golden):
    got = outputs(name)
    assert sorted(got) == sorted(golden[name])
    for key, value in got.items():
        torch.testing.assert_close(torch.tensor(value), torch.tensor(golden[name][key]), rtol=1e-5, atol=1e-6,
                                   msg=f"{name} {key}")
