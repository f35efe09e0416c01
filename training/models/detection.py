"""Two-stream region detector for action detection (Gkioxari & Malik 2015, "Finding action tubes").

The paper scores selective-search regions (kept when motion-salient) with a spatial CNN on
the RGB frame and a motion CNN on the optical flow, concatenates the two networks' fc7
features of each region and classifies them with one linear SVM per action. Here each
stream is a torchvision Faster R-CNN with a ResNet-FPN backbone:

    rgb    the frame (3 channels)
    flow   the L flow fields centred on the frame (2L channels, x and y interleaved), its
           first convolution initialised by cross-modality pre-training
           (backbones.cross_modality_conv) as in the two-stream networks

Region proposals come from each stream's RPN (learned, in place of selective search; the
motion stream's RPN plays the part of the paper's motion saliency). Fusion is per region:
both streams' proposals are pooled into one set, each stream computes its fc7 features
(TwoMLPHead) of every region on its own feature maps, and then

    concat  one classifier and box regressor over the concatenated features, trained with
            its own loss on the streams' features without changing them (the paper's fusion:
            SVMs on fixed fc7 features; here a softmax classifier trained alongside)
    late    the streams' class probabilities and box regressions averaged with
            ModelConfig.fusion_weights (rgb, flow; 1:1.5 as in the two-stream networks)

Each stream is trained with its own RPN and box losses, so rgb-only and flow-only
detections are available beside the fused ones. ModelConfig.num_classes counts the
actions plus background (class 0).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast

import torch
from torch import nn
from torchvision.models import ResNet
from torchvision.models.detection import FasterRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.roi_heads import fastrcnn_loss
from torchvision.models.detection.transform import GeneralizedRCNNTransform
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool
from torchvision.ops.misc import FrozenBatchNorm2d

from training.models.backbones import ARCHS, check_resnet, cross_modality_conv, load_backbone
from training.models.base import ModelConfig
from training.models.option_spec import OptionSpec

FUSIONS = ("concat", "late")


@dataclass(frozen=True, kw_only=True)
class Options:
    """The detector's settings beyond ModelConfig (defaults: torchvision's Faster R-CNN R50-FPN)."""

    fusion: str = "concat"
    min_size: int = 0  # short side frames are resized to (0: as stored)
    max_size: int = 0  # cap on the long side when resizing (0: none)
    fpn_channels: int = 256
    head_dim: int = 1024  # fc6/fc7 width of the box head
    anchor_sizes: tuple[int, ...] = (32, 64, 128, 256, 512)  # one per FPN level
    proposals: int = 1000  # RPN proposals per image and stream after NMS at test time (2x in training)
    roi_batch: int = 512  # sampled regions per image for the box losses
    score_thresh: float = 0.001  # low: linking needs candidates in every frame
    detections: int = 100  # per image and output

    def __post_init__(self) -> None:
        if self.fusion not in FUSIONS:
            raise ValueError(f"unknown detection fusion {self.fusion!r}; choose one of {FUSIONS}")
        if self.min_size < 0 or self.max_size < 0 or (self.max_size and self.max_size < self.min_size):
            raise ValueError(
                f"min_size and max_size must be >= 0 and max_size >= min_size, got {self.min_size}, {self.max_size}"
            )
        if self.fpn_channels < 1 or self.head_dim < 1 or self.proposals < 1 or self.roi_batch < 1:
            raise ValueError("fpn_channels, head_dim, proposals and roi_batch must be >= 1")
        if len(self.anchor_sizes) != 5 or min(self.anchor_sizes) < 1:
            raise ValueError(f"anchor_sizes needs 5 positive sizes (one per FPN level), got {self.anchor_sizes}")
        if not 0 <= self.score_thresh < 1 or self.detections < 1:
            raise ValueError("score_thresh must be in [0, 1) and detections >= 1")


OPTIONS = (
    OptionSpec(
        flag="det-fusion",
        default="concat",
        choices=FUSIONS,
        help="per-region fusion, concat (fc7 of both streams, the paper's) or late "
        "(scores averaged with --fusion-weights).",
    ),
    OptionSpec(flag="det-min-size", type=int, default=0, help="resize frames to this short side (0: as stored)."),
    OptionSpec(flag="det-max-size", type=int, default=0, help="cap on the long side when resizing (0: none)."),
    OptionSpec(flag="det-anchor-sizes", default="32,64,128,256,512", help="anchor size per FPN level (5)."),
    OptionSpec(flag="det-fpn-channels", type=int, default=256, help="FPN width."),
    OptionSpec(flag="det-head-dim", type=int, default=1024, help="fc6/fc7 width."),
    OptionSpec(
        flag="det-proposals",
        type=int,
        default=1000,
        help="RPN proposals per frame and stream at test time (twice that in training).",
    ),
    OptionSpec(flag="det-roi-batch", type=int, default=512, help="regions sampled per frame for the box losses."),
)


def options_from_cli(values: dict) -> Options:
    """The Options the parsed command-line values (OPTIONS' keys) describe."""
    return Options(
        fusion=values["det_fusion"],
        min_size=values["det_min_size"],
        max_size=values["det_max_size"],
        anchor_sizes=int_list(values["det_anchor_sizes"]),
        fpn_channels=values["det_fpn_channels"],
        head_dim=values["det_head_dim"],
        proposals=values["det_proposals"],
        roi_batch=values["det_roi_batch"],
    )


def int_list(text: str) -> tuple[int, ...]:
    """'32,64' -> (32, 64) (ValueError naming the text otherwise)."""
    try:
        return tuple(int(x) for x in str(text).split(","))
    except ValueError as exc:
        raise ValueError(f"{text!r}: expected comma-separated int values") from exc


def options(cfg: ModelConfig) -> Options:
    """The family options of `cfg` (the defaults when it has none)."""
    return cfg.options if cfg.options is not None else Options()


def check(cfg: ModelConfig) -> None:
    """Raise ValueError naming the first setting this family cannot build."""
    check_resnet(cfg.arch, "detection")
    if "warped" in cfg.stream_names:
        raise ValueError(f"the detector's streams are rgb and flow, got streams={cfg.streams!r}")
    if cfg.rgb_frames != 1 or cfg.snippets:
        raise ValueError(
            f"the detector reads one frame (and its flow stack) per item, got rgb_frames="
            f"{cfg.rgb_frames}, snippets={cfg.snippets}"
        )
    options(cfg)


class KeepSizeTransform(GeneralizedRCNNTransform):
    """torchvision's detection transform, leaving the frame size alone when `keep` is set."""

    def __init__(self, keep: bool, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.keep = keep

    def resize(self, image, target=None):
        if self.keep:
            return image, target
        return super().resize(image, target)


def _resnet(cfg: ModelConfig, stream: str) -> ResNet:
    """The stream's ResNet: BatchNorm when trained from scratch, frozen BatchNorm over loaded weights."""
    ctor, _ = ARCHS[cfg.arch]
    if cfg.weights is None:
        net = ctor(weights=None)
    else:
        net = ctor(weights=None, norm_layer=FrozenBatchNorm2d)
        net.load_state_dict(load_backbone(cfg.arch, cfg.weights).state_dict())
    if stream == "flow":
        net.conv1 = cross_modality_conv(net.conv1, 2 * cfg.clip_len)
    return net


def stream_detector(cfg: ModelConfig, stream: str) -> FasterRCNN:
    """One stream's Faster R-CNN on a ResNet-FPN, taking frames or flow stacks already normalised."""
    opts = options(cfg)
    net = _resnet(cfg, stream)
    stage2 = net.inplanes // 8  # layer1's output channels (64 or 256), as torchvision computes them
    backbone = BackboneWithFPN(
        net,
        {f"layer{k}": str(k - 1) for k in range(1, 5)},
        [stage2 * 2 ** (k - 1) for k in range(1, 5)],
        opts.fpn_channels,
        extra_blocks=LastLevelMaxPool(),
    )
    model = FasterRCNN(
        backbone,
        num_classes=None,
        rpn_anchor_generator=AnchorGenerator(tuple((a,) for a in opts.anchor_sizes), ((0.5, 1.0, 2.0),) * 5),
        rpn_pre_nms_top_n_train=2 * opts.proposals,
        rpn_post_nms_top_n_train=2 * opts.proposals,
        rpn_pre_nms_top_n_test=opts.proposals,
        rpn_post_nms_top_n_test=opts.proposals,
        box_head=TwoMLPHead(opts.fpn_channels * 7 * 7, opts.head_dim),
        box_predictor=FastRCNNPredictor(opts.head_dim, cfg.num_classes),
        box_batch_size_per_image=opts.roi_batch,
        box_score_thresh=opts.score_thresh,
        box_detections_per_img=opts.detections,
    )
    channels = 3 if stream == "rgb" else 2 * cfg.clip_len
    # The loader normalises both streams (training.transforms): mean 0 and std 1 here.
    model.transform = KeepSizeTransform(
        opts.min_size == 0, opts.min_size or 1, opts.max_size or 1_000_000, [0.0] * channels, [1.0] * channels
    )
    return model


def _box_features(det: FasterRCNN, features, proposals, sizes) -> torch.Tensor:
    """fc7 of every proposal on one stream's feature maps."""
    heads = det.roi_heads
    return heads.box_head(heads.box_roi_pool(features, proposals, sizes))


class TwoStreamDetector(nn.Module):
    """The streams of `cfg` (Faster R-CNN each) and their per-region fusion.

    forward(batch) takes {"rgb": [(3, H, W)], "flow": [(2L, H, W)]} (lists of tensors, the
    streams it has) and, in training, "targets": [{"boxes": (n, 4), "labels": (n,)}] with
    labels 1..N-1. Training returns the losses {"rgb/loss_...", "flow/...", "fused/..."};
    evaluation returns {"rgb", "flow", "fused"} -> per image {"boxes", "scores", "labels"}
    ("fused" is the only stream's detections when there is one; a concat-fused model also
    gives "late", its streams fused late).
    """

    streams: nn.ModuleDict  # stream name -> FasterRCNN (read them typed with `stream`)
    fused: FastRCNNPredictor | None

    def __init__(self, cfg: ModelConfig):
        check(cfg)
        super().__init__()
        self.cfg = cfg
        self.opts = options(cfg)
        self.streams = nn.ModuleDict({s: stream_detector(cfg, s) for s in cfg.stream_names})
        self.fused = None
        if len(self.streams) == 2 and self.opts.fusion == "concat":
            self.fused = FastRCNNPredictor(2 * self.opts.head_dim, cfg.num_classes)

    def stream(self, name: str) -> FasterRCNN:
        """The stream `name`'s detector (a ModuleDict hands out plain Modules)."""
        return cast(FasterRCNN, self.streams[name])

    @property
    def output_keys(self) -> tuple[str, ...]:
        return self.cfg.stream_names + ("fused",) + (("late",) if self.fused is not None else ())

    def forward(self, batch: dict) -> dict:
        targets = batch.get("targets") if self.training else None
        if self.training and targets is None:
            raise ValueError("training the detector needs batch['targets']")
        runs = {name: self._run(det, batch[name], targets) for name, det in self.streams.items()}
        sizes = {tuple(map(tuple, r["sizes"])) for r in runs.values()}
        if len(sizes) != 1:
            raise ValueError(f"the streams' frames have different sizes {sorted(sizes)}")
        if self.training:
            losses = {f"{name}/{k}": v for name, r in runs.items() for k, v in r["losses"].items()}
            if len(runs) == 2 and self.fused is not None:
                losses.update(self._fused_losses(runs, self.fused))
            return losses
        out = {name: r["detections"] for name, r in runs.items()}
        if len(runs) == 1:
            return {**out, "fused": next(iter(out.values()))}
        return {**out, **self._fused_detections(runs)}

    def _run(self, det: FasterRCNN, images: list[torch.Tensor], targets) -> dict:
        """Transform, backbone, RPN and the stream's own box head on a list of images."""
        originals = [tuple(img.shape[-2:]) for img in images]
        image_list, tgts = det.transform(images, targets)
        features = det.backbone(image_list.tensors)
        proposals, rpn_losses = det.rpn(image_list, features, tgts)
        dets, roi_losses = det.roi_heads(features, proposals, image_list.image_sizes, tgts)
        run = {
            "features": features,
            "proposals": proposals,
            "sizes": image_list.image_sizes,
            "originals": originals,
            "targets": tgts,
            "losses": {**rpn_losses, **roi_losses},
        }
        if not self.training:
            run["detections"] = det.transform.postprocess(dets, image_list.image_sizes, originals)
        return run

    def _union(self, runs: dict) -> list[torch.Tensor]:
        return [torch.cat(ps) for ps in zip(runs["rgb"]["proposals"], runs["flow"]["proposals"], strict=True)]

    def _fused_losses(self, runs: dict, fused: nn.Module) -> dict:
        """Concat fusion's box losses (of the `fused` head) on regions sampled from both streams' proposals."""
        rgb = self.stream("rgb")
        proposals, _, labels, regression = rgb.roi_heads.select_training_samples(
            self._union(runs), runs["rgb"]["targets"]
        )
        # Detached: as the paper's SVMs on fixed fc7 features, the fused head learns on top of the
        # streams without changing them, so "rgb" and "flow" stay single-stream detectors.
        x = torch.cat(
            [
                _box_features(self.streams[s], runs[s]["features"], proposals, runs[s]["sizes"]).detach()
                for s in ("rgb", "flow")
            ],
            dim=1,
        )
        logits, boxes = fused(x)
        cls, reg = fastrcnn_loss(logits, boxes, labels, regression)
        return {"fused/loss_classifier": cls, "fused/loss_box_reg": reg}

    def _fused_detections(self, runs: dict) -> dict[str, list[dict]]:
        """{"fused": ...} on the union of both streams' proposals, and "late" beside concat fusion
        (the same streams fused late, for comparison)."""
        proposals, sizes = self._union(runs), runs["rgb"]["sizes"]
        feats = {s: _box_features(self.streams[s], runs[s]["features"], proposals, sizes) for s in ("rgb", "flow")}
        heads = (
            {"fused": self._late(feats)}
            if self.fused is None
            else {"fused": self.fused(torch.cat([feats["rgb"], feats["flow"]], dim=1)), "late": self._late(feats)}
        )
        out = {}
        for name, (logits, boxes) in heads.items():
            b, s, lab = self.stream("rgb").roi_heads.postprocess_detections(logits, boxes, proposals, sizes)
            dets = [{"boxes": x, "scores": y, "labels": z} for x, y, z in zip(b, s, lab, strict=True)]
            out[name] = self.stream("rgb").transform.postprocess(dets, sizes, runs["rgb"]["originals"])
        return out

    def _late(self, feats: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """Weighted average of the streams' class probabilities (as log-probabilities, which the
        box post-processing's softmax turns back into them) and box regressions."""
        w_rgb, w_flow = self.cfg.settled_fusion_weights
        (l_rgb, b_rgb), (l_flow, b_flow) = (self.stream(s).roi_heads.box_predictor(feats[s]) for s in ("rgb", "flow"))
        prob = (w_rgb * torch.softmax(l_rgb, -1) + w_flow * torch.softmax(l_flow, -1)) / (w_rgb + w_flow)
        return torch.log(prob.clamp_min(1e-12)), (w_rgb * b_rgb + w_flow * b_flow) / (w_rgb + w_flow)


def build(cfg: ModelConfig) -> TwoStreamDetector:
    """The detector of `cfg` (streams: rgb, flow or both)."""
    return TwoStreamDetector(cfg)
