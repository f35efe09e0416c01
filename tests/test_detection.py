"""The two-stream detector: architecture, fusion, detection items (boxes and flow flip together),
and build --boxes -> train --task detect -> evaluate on CPU."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torchvision
from click.testing import CliRunner

from jobs.cli import cli
from pipeline import boxes as box_ops
from pipeline import encode, open_dataset
from pipeline.synthetic.detection import DetectionSetConfig, make_detection_dataset
from training import data
from training.data import stages as data_stages
from training.detection import data as det_data
from training.models.base import ModelConfig
from training.models.detection import Options, build
from training.transforms import hflip_flow, normalize_flow, stack_fields

TINY = Options(fpn_channels=16, head_dim=32, anchor_sizes=(8, 16, 32, 64, 128), proposals=20, roi_batch=16)
TINY_FLAGS = ["--arch", "resnet18", "--weights", "none", "--det-fpn-channels", "16", "--det-head-dim", "32", "--det-anchor-sizes",
              "8,16,32,64,128", "--det-proposals", "20", "--det-roi-batch", "16"]


@pytest.fixture(scope="module", autouse=True)
def one_thread(torch_one_thread):
    """Single-threaded torch (see conftest.torch_one_thread)."""


def tiny(streams="both", fusion="concat", **kw) -> ModelConfig:
    opts = Options(**{**TINY.__dict__, "fusion": fusion})
    return ModelConfig(model="detection", arch="resnet18", streams=streams, num_classes=3, clip_len=2,
                       options=opts, **kw)


def batch(n=2, h=48, w=64, clip_len=2):
    torch.manual_seed(0)
    return {"rgb": [torch.randn(3, h, w) for _ in range(n)], "flow": [torch.randn(2 * clip_len, h, w) for _ in range(n)],
            "targets": [{"boxes": torch.tensor([[8.0, 6.0, 30.0, 40.0]]), "labels": torch.tensor([2])},
                        {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}][:n]}


def test_resnet50_fpn_stream_is_torchvisions_faster_rcnn():
    cfg = ModelConfig(model="detection", arch="resnet50", streams="both", num_classes=25, clip_len=10)
    model = build(cfg)
    reference = torchvision.models.detection.fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None,
                                                                       num_classes=25)
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(model.streams["rgb"]) == count(reference)
    # The motion stream differs only in its first convolution: 2L = 20 input channels instead of 3.
    assert count(model.streams["flow"]) - count(reference) == 64 * 7 * 7 * (20 - 3)
    assert model.fused.cls_score.in_features == 2 * 1024 and model.fused.cls_score.out_features == 25
    assert model.output_keys == ("rgb", "flow", "fused", "late")


def test_flow_stream_starts_from_cross_modality_weights():
    torch.manual_seed(0)
    model = build(tiny())
    w = model.streams["flow"].backbone.body.conv1.weight
    assert w.shape[1] == 4 and torch.allclose(w, w[:, :1].expand_as(w))  # every channel the RGB mean


def test_training_losses_and_evaluation_outputs():
    model = build(tiny())
    model.train()
    losses = model(batch())
    assert set(losses) == {f"{s}/{k}" for s in ("rgb", "flow") for k in
                           ("loss_objectness", "loss_rpn_box_reg", "loss_classifier", "loss_box_reg")} | {
        "fused/loss_classifier", "fused/loss_box_reg"}
    losses["fused/loss_classifier"].backward()
    assert model.fused.cls_score.weight.grad is not None
    # The fused head learns on fixed stream features: its loss leaves the streams alone.
    assert all(p.grad is None for p in model.streams.parameters())
    model.eval()
    with torch.no_grad():
        out = model({k: v for k, v in batch().items() if k != "targets"})
    assert set(out) == {"rgb", "flow", "fused", "late"}
    for dets in out.values():
        assert len(dets) == 2 and all(d["boxes"].shape[1] == 4 and (d["labels"] >= 1).all() for d in dets)
        assert all((d["boxes"][:, 2] <= 64).all() and (d["boxes"][:, 3] <= 48).all() for d in dets)
    single = build(tiny(streams="flow"))
    single.eval()
    with torch.no_grad():
        out = single({"flow": batch()["flow"]})
    assert set(out) == {"flow", "fused"} and out["fused"] is out["flow"]


def test_late_fusion_averages_probabilities_with_the_fusion_weights():
    model = build(tiny(fusion="late", fusion_weights=(1.0, 3.0)))
    assert model.fused is None
    feats = {"rgb": torch.randn(5, 32), "flow": torch.randn(5, 32)}
    logits, boxes = model._late(feats)
    (l_r, b_r), (l_f, b_f) = (model.streams[s].roi_heads.box_predictor(feats[s]) for s in ("rgb", "flow"))
    want = (torch.softmax(l_r, -1) + 3 * torch.softmax(l_f, -1)) / 4
    assert torch.allclose(torch.softmax(logits, -1), want, atol=1e-6)
    assert torch.allclose(boxes, (b_r + 3 * b_f) / 4, atol=1e-6)


# --- items from a real build ---------------------------------------------------------------------

def flowshard(*args):
    result = CliRunner().invoke(cli, list(map(str, args)))
    assert result.exit_code == 0, result.output + repr(result.exception)
    return result.output


@pytest.fixture(scope="module")
def det_ds(tmp_path_factory):
    root = tmp_path_factory.mktemp("det_e2e")
    det = make_detection_dataset(root / "set", DetectionSetConfig(classes=("jump", "slide"), train_per_class=1,
                                                                  test_per_class=1, frames=10, size=(64, 48)))
    flowshard("build", det.list_csv, root / "ds", "--boxes", det.boxes_csv, "--flow", "dis", "--resize", "none",
              "--step", "2", "--executor", "local", "--no-progress")
    return root / "ds"


def test_items_centre_flow_on_their_frame_and_flip_boxes_with_it(det_ds):
    ds = open_dataset(det_ds)
    video = ds.videos(split="test")[0]
    (sample,) = ds.raw(video.video_id)
    meta = encode.load_meta(sample["json"])
    cfg = data.DataConfig(task="detect", clip_len=4, batch_size=2, workers=0)
    items = det_data.pick_items(sample, meta, cfg, train=False, epoch=0, where="test")
    assert [it["frame"] for it in items] == list(range(10))  # every frame of a test video
    # --step 2: field i is the pair (i, i + 2); frame 5's stack starts at frames 3, 4, 5, 6.
    fields = det_data.frame_fields(meta, 4)
    assert [meta["flow_fields"][p]["from"] for p in fields[5]] == [3, 4, 5, 6]
    assert [meta["flow_fields"][p]["from"] for p in fields[0]] == [0, 0, 0, 1]  # clamped at the start
    assert items[5]["flow"][0] == [sample[encode.flow_member(p)] for p in fields[5]]
    with_box = next(it for it in items if len(it["boxes"]))
    frame_meta = meta["frames"][with_box["clip"]]
    assert with_box["boxes"].tolist() == [pytest.approx(b[:4]) for b in frame_meta["boxes"]]
    assert with_box["labels"].tolist() == [meta["tracks"][0]["label_id"] + 1]
    # Flip: the frame, the flow (x negated) and the boxes move together.
    decoded = data_stages.decode_item(dict(with_box))
    planes = stack_fields(decoded["flow"][0].planes)
    rgb = decoded["rgb"][0, 0]
    flipped = det_data.view(dict(decoded, boxes=with_box["boxes"].copy()), flip=True)
    assert np.allclose(flipped["flow"], hflip_flow(normalize_flow(planes)))
    x1, y1, x2, y2 = np.round(with_box["boxes"][0]).astype(int)
    fx1, _, fx2, _ = np.round(flipped["boxes"][0]).astype(int)
    assert (fx1, fx2) == (64 - x2, 64 - x1)
    plain = det_data.transform_item(dict(decoded, boxes=with_box["boxes"].copy()), cfg, False, 0)  # eval: no flip
    assert np.allclose(flipped["rgb"][:, y1:y2, fx1:fx2], plain["rgb"][:, y1:y2, x1:x2][:, :, ::-1])
    assert np.array_equal(plain["boxes"], with_box["boxes"]) and rgb.shape == (48, 64, 3)


def test_box_flip_is_its_own_inverse():
    b = np.array([[1.5, 2.0, 10.0, 9.0], [0.0, 0.0, 64.0, 48.0]])
    assert np.allclose(box_ops.flip_boxes(box_ops.flip_boxes(b, 64), 64), b)
    assert box_ops.flip_boxes(b, 64)[1].tolist() == [0.0, 0.0, 64.0, 48.0]


def test_train_detect_and_evaluate_end_to_end(det_ds, tmp_path):
    run = tmp_path / "run"
    flowshard("train", det_ds, "--task", "detect", "--output", run, "--epochs", "1", "--steps-per-epoch", "2",
              "--batch-size", "2", "--clip-len", "2", "--lr", "0.01", "--eval-every", "0", "--workers", "0",
              "--device", "cpu", "--no-progress", *TINY_FLAGS)
    saved = json.loads((run / "config.json").read_text())
    assert saved["data"]["task"] == "detect" and saved["model"]["model"] == "detection"
    assert saved["model"]["num_classes"] == 3 and saved["model"]["options"]["fusion"] == "concat"
    out = tmp_path / "det.json"
    flowshard("evaluate", det_ds, run / "last.pt", "--json", out, "--workers", "0", "--device", "cpu",
              "--tube-param", "candidates=3", "--no-progress")
    report = json.loads(out.read_text())
    assert set(report) >= {"rgb", "flow", "fused", "late", "checkpoint", "dataset", "protocol"}
    for name in ("rgb", "flow", "fused", "late"):
        r = report[name]
        assert r["frames"] == 20 and set(r["video_map"]) == {"0.2", "0.5"} and set(r["frame_ap"]) == {"jump", "slide"}
        assert 0 <= r["frame_map"] <= 1 and "video_top1" in r and len(r["confusion"]) == 2
    assert report["protocol"]["tubes"]["candidates"] == 3
    assert (tmp_path / "det_confusion.png").is_file()
    result = CliRunner().invoke(cli, ["evaluate", str(det_ds), str(run / "last.pt"), "--json", str(out),
                                      "--tube-param", "lambda=2", "--no-progress", "--device", "cpu"])
    assert result.exit_code != 0 and "unknown tube setting(s) ['lambda']" in result.output


def test_a_training_epoch_reads_each_video_once_and_no_frame_twice(det_ds):
    """Detection items are frames, several per video sample: the loader's block (videos per
    epoch) is the items an epoch takes over the frames each video gives, so an epoch reads
    each training video once and hands out each chosen frame once."""
    source = data.open_source(str(det_ds))
    cfg = data.DataConfig(task="detect", sampler="tsn", segments=4, clip_len=2, batch_size=2, workers=0)
    assert det_data.items_per_sample(cfg) == 4
    videos = source.num_samples("train")
    steps = videos * 4 // cfg.batch_size
    loader = data.make_loader(source, "train", cfg, train=True, steps=steps)
    for epoch in range(2):
        loader.set_epoch(epoch)
        seen = [(v, f) for b in loader for v, f in zip(b["video_id"], b["frame"])]
        assert len(seen) == steps * cfg.batch_size
        assert len(set(seen)) == len(seen), f"epoch {epoch}: a frame handed out twice: {sorted(seen)}"
        assert len({v for v, _ in seen}) == videos
