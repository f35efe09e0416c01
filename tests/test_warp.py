"""Camera-motion compensation (pipeline.flow.warp) on the panning-camera generator (pipeline.synthetic.camera)."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from pipeline.synthetic import camera as sc
from pipeline.flow import warp
from pipeline.flow.opencv import DIS, Farneback, OpenCVTVL1

PANNING = sc.CameraSceneConfig(width=128, height=96, frames=4, pan=(2.6, -1.3), zoom=0.01, object_speed=(1.7, 0.6))


@pytest.fixture(scope="module")
def scene():
    return sc.render_scene(PANNING)


def grey(frames):
    return np.stack([cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in frames])


def test_ground_truth_is_exact_for_whole_pixel_motion():
    s = sc.render_scene(sc.CameraSceneConfig(width=96, height=64, frames=3, pan=(3, 1), object_speed=(-2, 1)))
    g = grey(s.frames).astype(np.float32)
    bg, obj = sc.score_regions(s)
    ys, xs = np.mgrid[0:64, 0:96].astype(np.float32)
    for t, f in enumerate(s.flow):
        back = cv2.remap(g[t + 1], xs + f[..., 0], ys + f[..., 1], cv2.INTER_NEAREST)
        assert np.abs(back - g[t])[bg[t] | obj[t]].max() == 0
        assert (f[bg[t]] == [-3, -1]).all()
        assert (f[obj[t]] == [-5, 0]).all()  # the object moves (-2, 1), seen by a camera moving (3, 1)
        assert (s.warped_flow[t][obj[t]] == [-2, 1]).all()
        assert np.abs(s.warped_flow[t][~s.object_mask[t]]).max() == 0
    assert bg.sum() > 10 * obj.sum() > 0


def test_homography_of_the_ground_truth(scene):
    h, w = scene.flow.shape[1:3]
    for hom, f, m in zip(scene.homographies, scene.flow, scene.object_mask):
        np.testing.assert_allclose(warp.homography_flow(hom, h, w)[~m], f[~m], atol=1e-3)


@pytest.mark.parametrize("features", warp.FEATURES)
def test_camera_motion_is_recovered(scene, features):
    g = grey(scene.frames)
    h, w = g.shape[1:]
    bg, _ = sc.score_regions(scene)
    for t, hom in enumerate(scene.homographies):
        cam = warp.estimate_camera(g[t], g[t + 1], warp.WarpConfig(features=features))
        assert cam.estimated and cam.inliers >= 25
        err = np.linalg.norm(warp.homography_flow(cam.matrix, h, w) - warp.homography_flow(hom, h, w), axis=-1)
        assert err[bg[t]].mean() < 0.3, (features, t, err[bg[t]].mean())


@pytest.mark.parametrize("estimator", [DIS, Farneback, OpenCVTVL1], ids=["dis", "farneback", "tvl1"])
def test_warped_flow_removes_the_camera_and_keeps_the_object(scene, estimator):
    """The issue's target: background magnitude drops by >= 80 %, the object's own motion stays."""
    g = grey(scene.frames)
    est = estimator()
    cfg = warp.WarpConfig()
    cams = [warp.estimate_camera(a, b, cfg) for a, b in zip(g[:-1], g[1:])]
    warped_next = np.stack([warp.compensate(a, b, c.matrix, cfg.border) for a, b, c in zip(g[:-1], g[1:], cams)])
    plain, warped = est(g[:-1], g[1:]), est(g[:-1], warped_next)
    bg, obj = sc.score_regions(scene)
    mag = lambda f, m: float(np.linalg.norm(f, axis=-1)[m].mean())  # noqa: E731
    epe = lambda f, m: float(np.linalg.norm(f - scene.warped_flow, axis=-1)[m].mean())  # noqa: E731
    assert mag(plain, bg) > 2.0  # the pan is there in plain flow
    assert mag(warped, bg) <= 0.2 * mag(plain, bg)
    own = mag(scene.warped_flow, obj)
    assert own > 1.5 and epe(warped, obj) < 0.5 * own  # the object's motion in the scene survives
    assert epe(plain, obj) > own  # plain flow on the object is not its own motion


def test_person_boxes_keep_features_off_the_object(scene):
    g = grey(scene.frames)
    ys, xs = np.nonzero(scene.object_mask[0])
    box = (xs.min() - 2, ys.min() - 2, xs.max() + 3, ys.max() + 3)
    mask = warp.exclusion_mask(g.shape[1:], [box])
    assert mask[ys, xs].max() == 0 and mask.mean() > 0.5 * 255
    p0, _ = warp.match_features(g[0], g[1], warp.WarpConfig(), mask)
    t0, _ = warp.track_corners(g[0], g[1], warp.WarpConfig(), None, mask)
    for pts in (p0, t0):
        inside = (pts[:, 0] >= box[0]) & (pts[:, 0] < box[2]) & (pts[:, 1] >= box[1]) & (pts[:, 1] < box[3])
        assert len(pts) > 20 and not inside.any()
    cam = warp.estimate_camera(g[0], g[1], warp.WarpConfig(), mask)
    err = warp.homography_flow(cam.matrix, 96, 128) - warp.homography_flow(scene.homographies[0], 96, 128)
    assert cam.estimated and np.linalg.norm(err, axis=-1).mean() < 0.3
    with pytest.raises(ValueError, match="a box is"):
        warp.exclusion_mask((4, 4), [(1, 2, 3)])


def test_no_texture_means_no_estimate():
    flat = np.full((48, 64), 90, np.uint8)
    cam = warp.estimate_camera(flat, flat, warp.WarpConfig())
    assert not cam.estimated and np.array_equal(cam.matrix, np.eye(3))
    assert cam.as_meta() == {"homography": [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0], "matches": 0,
                             "inliers": 0, "estimated": False}
    with pytest.raises(ValueError, match="grey uint8"):
        warp.estimate_camera(flat, flat[:10], warp.WarpConfig())


def test_uncovered_border_takes_frame_t():
    prev = np.full((40, 50), 10, np.uint8)
    nxt = np.full((40, 50), 200, np.uint8)
    shift = np.array([[1, 0, 8.0], [0, 1, 0], [0, 0, 1]])  # H p = p + (8, 0): the right edge leaves
    out = warp.compensate(prev, nxt, shift, border=2)
    # H p lands more than 2 px inside the frame for x < 39 and 2 < y < 37
    assert (out[3:37, :39] == 200).all() and (out[:, 39:] == 10).all() and (out[:3] == 10).all()
    assert warp.compensate(prev, nxt, np.eye(3)).tolist() == nxt.tolist()


def test_config_is_validated():
    with pytest.raises(ValueError, match="unknown warp features"):
        warp.WarpConfig(features="surf")
    with pytest.raises(ValueError):
        warp.WarpConfig(ratio=1.5)


def test_worker_keeps_camera_features_off_person_boxes(scene):
    """pipeline.stages.warped.warp_inputs: boxes of a pair's frames become its exclusion mask."""
    from pipeline.stages.config import WorkerConfig
    from pipeline.stages.chunks import frames_job
    from pipeline.stages.warped import warp_inputs

    job = frames_job(scene.frames, "v", 0, 10, 3, True)
    cfg = WorkerConfig(warp=warp.WarpConfig())
    free = warp_inputs(job, cfg)
    assert [c["estimated"] for c in free.cameras] == [True, True, True] and free.seconds.shape == (3, 96, 128)
    everywhere = {11: [(0, 0, 128, 96)]}  # frame 11 (row 1) fully covered: pairs 10->11 and 11->12 see nothing
    boxed = warp_inputs(job, cfg, boxes=everywhere)
    assert [c["estimated"] for c in boxed.cameras] == [False, False, True]
    assert [c["matches"] for c in boxed.cameras][:2] == [0, 0]
    assert np.array_equal(boxed.seconds[0], grey(scene.frames)[1])  # identity: frame t+1 as it is
