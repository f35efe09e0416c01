"""Batched JPEG decode and augmentation on the training device (`flowshard train --gpu-decode`).

The CPU loader decodes each JPEG with OpenCV and crops, resizes, flips and normalizes in its
worker processes (training.transforms). With --gpu-decode the workers only read, pick and
shuffle: a batch leaves them as compressed bytes (`raw_collate`), and the main process decodes
every JPEG of the batch in one `torchvision.io.decode_jpeg(list, device=...)` call (nvJPEG on
CUDA) and runs the same transforms as tensor ops there (`GpuBatchDecoder`).

Same semantics as training.transforms: one crop box and one flip per item, drawn from the
same seeded generator in the same order (so a CPU and a GPU run pick the same boxes), and the
same test boxes at training's scale (training.transforms.eval_boxes); crops
resized bilinearly (half-pixel centres, as cv2.INTER_LINEAR) and rounded to integers as the
CPU path's uint8 resize is; RGB with ImageNet mean/std, flow as (q - 128) / 128 with its x
channels (even, interleaved [x_0, y_0, x_1, ...]) negated on flip; layout (B, V, K, 3F, S, S)
and (B, V, K, 2L, S, S). Values can differ from the CPU path by a JPEG decoder's rounding
(nvJPEG vs libjpeg-turbo) and the resize's: tests hold them within one quantization level.
Every step also runs on CPU tensors (device="cpu"), which is how the tests compare the paths.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F

from pipeline import snippets as snip
from training.transforms import FLOW_ZERO, IMAGENET_MEAN, IMAGENET_STD, Box, TransformConfig, eval_boxes, multiscale_box


def raw_collate(items: list[dict]) -> dict:
    """Items with undecoded members -> a batch of bytes for `GpuBatchDecoder` (runs in loader workers)."""
    return {
        "label": torch.tensor([it["label"] for it in items], dtype=torch.long),
        "video_id": [it["video_id"] for it in items],
        "clip": [it["clip"] for it in items],
        "key": [it["__key__"] for it in items],
        "rgb_bytes": [it["rgb"] for it in items] if items[0]["rgb"] is not None else None,
        "flow_bytes": [it["flow"] for it in items] if items[0]["flow"] is not None else None,
    }


def decode_jpegs(blobs: list[bytes], device: torch.device, gray: bool) -> list[torch.Tensor]:
    """Decode JPEG bytes in one batched call on `device`: (C, H, W) uint8 each (C = 1 or 3)."""
    from torchvision.io import ImageReadMode, decode_jpeg

    data = [torch.frombuffer(bytearray(b), dtype=torch.uint8) for b in blobs]
    mode = ImageReadMode.GRAY if gray else ImageReadMode.RGB
    if device.type == "cuda":
        return decode_jpeg(data, mode=mode, device=device)
    return [decode_jpeg(d, mode=mode) for d in data]


def crop_resize(x: torch.Tensor, box: Box, size: int) -> torch.Tensor:
    """Crop (..., H, W) to `box`, resize to size x size (bilinear, half-pixel centres), rounded: float."""
    patch = x[..., box.y : box.y + box.h, box.x : box.x + box.w].float()
    if patch.shape[-2:] == (size, size):
        return patch
    lead = patch.shape[:-2]
    out = F.interpolate(patch.reshape(-1, 1, box.h, box.w), size=(size, size), mode="bilinear", align_corners=False)
    return out.round_().clamp_(0, 255).reshape(*lead, size, size)


def normalize_rgb(x: torch.Tensor) -> torch.Tensor:
    """(..., 3, S, S) 0..255 -> ImageNet-normalized float32."""
    mean = torch.as_tensor(IMAGENET_MEAN, device=x.device).view(3, 1, 1)
    std = torch.as_tensor(IMAGENET_STD, device=x.device).view(3, 1, 1)
    return (x / 255.0 - mean) / std


def normalize_flow(x: torch.Tensor, flip: bool) -> torch.Tensor:
    """(..., 2L, S, S) quantized -> (q - 128) / 128, x channels negated when flipped."""
    out = (x - FLOW_ZERO) * (1.0 / FLOW_ZERO)
    if flip:
        out[..., 0::2, :, :] *= -1.0
    return out


def item_views(h: int, w: int, cfg: TransformConfig, train: bool, rng) -> list[tuple[Box, bool]]:
    """The (box, flip) views of one item, drawn as training.transforms draws them (test views
    at training's scale: training.transforms.eval_boxes)."""
    if train:
        box = multiscale_box(h, w, cfg, rng)
        return [(box, cfg.flip and rng.random() < 0.5)]
    return eval_boxes(h, w, cfg)


class GpuBatchDecoder:
    """Turns `raw_collate` batches into the loader's tensors on `device` (module docstring).

    cfg: the loader's DataConfig; state: its EpochState (the epoch seeds the crop boxes).
    """

    def __init__(self, cfg, device: str | torch.device, *, train: bool, state) -> None:
        self.cfg, self.device, self.train, self.state = cfg, torch.device(device), train, state

    def __call__(self, raw: dict) -> dict:
        batch = {k: raw[k] for k in ("label", "video_id", "clip", "key")}
        rgb = self._decode(raw["rgb_bytes"], gray=False) if raw["rgb_bytes"] is not None else None
        flow = self._decode(raw["flow_bytes"], gray=True) if raw["flow_bytes"] is not None else None
        rgb_out, flow_out = [], []
        for i, (key, clip) in enumerate(zip(raw["key"], raw["clip"], strict=True)):
            r = rgb[i] if rgb is not None else None  # (K, F, 3, H, W)
            f = self._flow_channels(flow[i]) if flow is not None else None  # (K, 2L, H, W)
            views = self._views(r, f, key, clip)
            if r is not None:
                rgb_out.append(torch.stack([self._rgb_view(r, box, flip) for box, flip, r in views["rgb"]]))
            if f is not None:
                flow_out.append(torch.stack([self._flow_view(f, box, flip) for box, flip, f in views["flow"]]))
        if rgb_out:
            batch["rgb"] = torch.stack(rgb_out)
        if flow_out:
            batch["flow"] = torch.stack(flow_out)
        return batch

    def _decode(self, per_item: list, gray: bool) -> list[torch.Tensor]:
        """Every JPEG of the batch in one call; back as one (K, N, C, H, W) tensor per item."""
        shapes = [(len(snips), len(snips[0])) for snips in per_item]
        flat = [b for snips in per_item for members in snips for b in members]
        images = decode_jpegs(flat, self.device, gray)
        out, pos = [], 0
        for k, n in shapes:
            out.append(torch.stack(images[pos : pos + k * n]).view(k, n, *images[pos].shape))
            pos += k * n
        return out

    @staticmethod
    def _flow_channels(planes: torch.Tensor) -> torch.Tensor:
        """(K, L, 1, 2H, W) x-over-y planes -> (K, 2L, H, W) interleaved [x_0, y_0, x_1, ...]."""
        k, length, _, h2, w = planes.shape
        return planes.view(k, length, 2, h2 // 2, w).reshape(k, 2 * length, h2 // 2, w)

    def _views(self, rgb, flow, key: str, clip: int) -> dict:
        """Views of both streams: one set of boxes for both (as the CPU path)."""
        cfg = self.cfg.transform
        sizes = {tuple(x.shape[-2:]) for x in (rgb, flow) if x is not None}
        if len(sizes) != 1:
            raise ValueError(f"RGB and flow must have one stored size to be cropped together, got {sorted(sizes)}")
        h, w = sizes.pop()
        rng = snip.sample_rng(self.cfg.seed, self.state.epoch, f"{key}/{clip}/augment") if self.train else None
        views = item_views(h, w, cfg, self.train, rng)
        return {"rgb": [(b, fl, rgb) for b, fl in views], "flow": [(b, fl, flow) for b, fl in views]}

    def _rgb_view(self, rgb: torch.Tensor, box: Box, flip: bool) -> torch.Tensor:
        """(K, F, 3, H, W) -> (K, 3F, S, S) normalized, frames stacked on channels in time order."""
        x = crop_resize(rgb, box, self.cfg.transform.crop_size)
        x = normalize_rgb(x.flip(-1) if flip else x)
        return x.reshape(x.shape[0], -1, *x.shape[-2:])

    def _flow_view(self, flow: torch.Tensor, box: Box, flip: bool) -> torch.Tensor:
        """(K, 2L, H, W) -> (K, 2L, S, S) normalized, x negated when flipped."""
        x = crop_resize(flow, box, self.cfg.transform.crop_size)
        return normalize_flow(x.flip(-1) if flip else x, flip)


def decode_batches(batches: Iterable[dict], decoder: GpuBatchDecoder) -> Iterable[dict]:
    """Map a loader's raw batches through the decoder (in the main process, on its device)."""
    for raw in batches:
        yield decoder(raw)
