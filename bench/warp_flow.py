"""Warped flow against plain flow on a panning, zooming camera with an independently moving object.

Scenes come from pipeline.synthetic.camera (exact ground truth): a photograph seen by a camera
that pans (and zooms), with a textured object moving across it. For each estimator it reports,
over every pair of every scene:

- background: mean flow magnitude (px) of plain and of warped flow, and the drop (the
  issue's target: >= 80 %);
- object: mean end-point error of warped flow against the object's own motion in the scene
  (the true warped flow), beside that motion's mean magnitude, and of plain flow against the
  true plain flow;
- the camera estimate: mean error (px) of the motion the fitted homography predicts on the
  background, and the seconds per pair it takes.

`--build` also builds the scenes as videos with `flowshard build --flow-warp` (in-process,
TV-L1) and scores the stored, quantized JPEG fields the same way.

    PYTHONPATH=. python bench/warp_flow.py [--size 340x256] [--frames 8] [--build] [--out table.md]
"""
from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

from pipeline.synthetic import camera as sc
from pipeline.flow import warp
from pipeline.flow.config import FlowConfig
from pipeline.flow.estimators import algorithms_for, make_estimator

log = logging.getLogger("bench.warp_flow")

ESTIMATORS = algorithms_for("opencv")  # the CPU estimators a build worker runs


def scenes(width: int, height: int, frames: int) -> dict[str, sc.CameraSceneConfig]:
    """The benchmark's scenes: pans of 2-4 px per frame, one with a 1 % zoom, different photos."""
    base = dict(width=width, height=height, frames=frames)
    return {"pan_right": sc.CameraSceneConfig(**base, pan=(3.0, 0.0), object_speed=(-2.0, 0.5), seed=0),
            "pan_diagonal": sc.CameraSceneConfig(**base, pan=(2.3, -1.7), object_speed=(1.5, 1.0), seed=1),
            "pan_zoom": sc.CameraSceneConfig(**base, pan=(-2.5, 0.8), zoom=0.01, object_speed=(1.8, -0.4), seed=2),
            "slow_pan": sc.CameraSceneConfig(**base, pan=(1.2, 0.3), object_speed=(-2.5, 0.0), seed=3)}


def grey(frames: np.ndarray) -> np.ndarray:
    return np.stack([cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in frames])


class Tally:
    """Sums over pixels and pairs, for pixel-weighted means."""

    def __init__(self) -> None:
        self.sums: dict[str, float] = {}
        self.counts: dict[str, int] = {}

    def add(self, name: str, values: np.ndarray) -> None:
        self.sums[name] = self.sums.get(name, 0.0) + float(values.sum())
        self.counts[name] = self.counts.get(name, 0) + int(values.size)

    def mean(self, name: str) -> float:
        return self.sums[name] / max(1, self.counts[name])


def score(tally: Tally, scene: sc.CameraScene, plain: np.ndarray, warped: np.ndarray) -> None:
    """Add one scene's plain and warped flow (T-1, H, W, 2) to the tally."""
    bg, obj = sc.score_regions(scene)
    norm = lambda f: np.linalg.norm(f, axis=-1)  # noqa: E731
    tally.add("bg_plain", norm(plain)[bg])
    tally.add("bg_warped", norm(warped)[bg])
    tally.add("obj_own", norm(scene.warped_flow)[obj])
    tally.add("obj_warped_epe", norm(warped - scene.warped_flow)[obj])
    tally.add("obj_plain_epe", norm(plain - scene.flow)[obj])


def camera_errors(tally: Tally, scene: sc.CameraScene, cams: list[warp.CameraMotion]) -> None:
    """Add the background error of the fitted homographies' motion to the tally."""
    bg, _ = sc.score_regions(scene)
    h, w = scene.flow.shape[1:3]
    for t, cam in enumerate(cams):
        err = warp.homography_flow(cam.matrix, h, w) - warp.homography_flow(scene.homographies[t], h, w)
        tally.add("camera_err", np.linalg.norm(err, axis=-1)[bg[t]])


def in_memory(configs: dict, estimators: tuple[str, ...], cfg: warp.WarpConfig) -> list[dict]:
    """Plain and warped flow of every scene in process, per estimator."""
    rendered = {name: sc.render_scene(c) for name, c in configs.items()}
    cams, cam_tally, seconds = {}, Tally(), 0.0
    for name, scene in rendered.items():
        g = grey(scene.frames)
        start = time.perf_counter()
        cams[name] = [warp.estimate_camera(a, b, cfg) for a, b in zip(g[:-1], g[1:])]
        seconds += time.perf_counter() - start
        camera_errors(cam_tally, scene, cams[name])
    pairs = sum(len(c) for c in cams.values())
    rows = []
    for algo in estimators:
        est = make_estimator(FlowConfig(algorithm=algo))
        tally = Tally()
        for name, scene in rendered.items():
            g = grey(scene.frames)
            nxt = np.stack([warp.compensate(a, b, c.matrix, cfg.border) for a, b, c in zip(g[:-1], g[1:], cams[name])])
            score(tally, scene, est(g[:-1], g[1:]), est(g[:-1], nxt))
        rows.append(row(algo, "in memory (float)", tally, pairs))
        log.info("%s", rows[-1])
    for r in rows:
        r.update(camera_err=cam_tally.mean("camera_err"), camera_s=seconds / pairs,
                 estimated=sum(c.estimated for cs in cams.values() for c in cs), pairs=pairs)
    return rows


def stored(configs: dict, workdir: Path, cfg: warp.WarpConfig) -> dict:
    """Build the scenes as videos with --flow-warp (TV-L1, in-process) and score the stored fields."""
    from pipeline import open_dataset
    from pipeline.build.config import BuildConfig
    from pipeline.build.run import build_dataset
    from pipeline.decode import DecodeConfig
    from pipeline.stages.config import WorkerConfig

    for name, c in configs.items():
        sc.write_camera_videos(workdir / "videos" / name, {f"v_{name}": c})
    build_cfg = BuildConfig(worker=WorkerConfig(decode=DecodeConfig(resize="none"), warp=cfg))
    start = time.perf_counter()
    summary = build_dataset(str(workdir / "videos"), str(workdir / "ds"), build_cfg, progress=False)
    seconds = time.perf_counter() - start
    ds = open_dataset(workdir / "ds")
    tally = Tally()
    for name, c in configs.items():
        s = ds.read(f"{name}_v_{name}")
        score(tally, sc.render_scene(c), s.flow, s.warped)
    out = row("tvl1", "stored (--flow-warp build, JPEG)", tally, summary.flow_fields)
    out["build_s"] = seconds
    return out


def row(algo: str, where: str, tally: Tally, pairs: int) -> dict:
    plain, warped = tally.mean("bg_plain"), tally.mean("bg_warped")
    return {"estimator": algo, "where": where, "pairs": pairs, "bg_plain": plain, "bg_warped": warped,
            "drop": 1 - warped / plain, "obj_own": tally.mean("obj_own"),
            "obj_warped_epe": tally.mean("obj_warped_epe"), "obj_plain_epe": tally.mean("obj_plain_epe")}


def render(rows: list[dict], configs: dict, cfg: warp.WarpConfig) -> str:
    c0 = next(iter(configs.values()))
    first = rows[0]
    lines = [f"- {len(configs)} scenes ({', '.join(configs)}), {c0.width}x{c0.height}, {c0.frames} frames each: "
             f"{first['pairs']} pairs; warp features {cfg.features}",
             f"- camera: homography estimated for {first['estimated']} of {first['pairs']} pairs, mean error of its "
             f"motion on the background {first['camera_err']:.3f} px, {1000 * first['camera_s']:.1f} ms per pair",
             "", "| estimator | flow | background, plain (px) | background, warped (px) | drop | "
             "object's own motion (px) | object EPE, warped | object EPE, plain |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        lines.append(f"| {r['estimator']} | {r['where']} | {r['bg_plain']:.3f} | {r['bg_warped']:.3f} | "
                     f"{100 * r['drop']:.1f} % | {r['obj_own']:.3f} | {r['obj_warped_epe']:.3f} | "
                     f"{r['obj_plain_epe']:.3f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", default="340x256", help="WxH of the scenes")
    parser.add_argument("--frames", type=int, default=8, help="frames per scene")
    parser.add_argument("--estimators", default=",".join(ESTIMATORS))
    parser.add_argument("--features", default="orb", choices=warp.FEATURES)
    parser.add_argument("--build", action="store_true", help="also build the scenes with --flow-warp (TV-L1)")
    parser.add_argument("--out", type=Path, default=None, help="also write the Markdown table here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    cv2.setNumThreads(1)
    w, h = (int(v) for v in args.size.lower().split("x"))
    configs = scenes(w, h, args.frames)
    cfg = warp.WarpConfig(features=args.features)
    start = time.perf_counter()
    rows = in_memory(configs, tuple(args.estimators.split(",")), cfg)
    if args.build:
        with tempfile.TemporaryDirectory() as tmp:
            rows.append({**rows[0], **stored(configs, Path(tmp), cfg)})
    report = render(rows, configs, cfg) + f"\nTotal benchmark time: {time.perf_counter() - start:.0f} s\n"
    print(report)
    if args.out:
        args.out.write_text(report)


if __name__ == "__main__":
    main()
