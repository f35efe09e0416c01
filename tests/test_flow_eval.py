"""pipeline.flow.accuracy: exact ground truth of the photo pairs, .flo files, scores; one implementation
shared with bench/gpu_flow.py."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from pipeline.flow import accuracy as flow_eval
from pipeline.synthetic import photos
from pipeline.flow.opencv import Farneback


def test_shipped_photos_load():
    for name in photos.PHOTOS:
        img = photos.photo(name)
        assert img.dtype == np.uint8 and img.ndim == 3 and min(img.shape[:2]) >= 300
    assert photos.photo_texture(40, 50, seed=1).shape == (40, 50)
    with pytest.raises(ValueError, match="unknown photo"):
        photos.photo("nope")


@pytest.mark.parametrize("kind", flow_eval.MOTIONS)
def test_photo_pair_ground_truth_is_exact(kind):
    """Sampling frame 1 at p + d(p) gives frame 0 back (up to rounding and interpolation)."""
    prev, nxt, truth = flow_eval.photo_pair(kind, 64, 80, seed=2)
    ys, xs = np.mgrid[0:64, 0:80].astype(np.float32)
    back = cv2.remap(nxt.astype(np.float32), xs + truth[..., 0], ys + truth[..., 1], cv2.INTER_CUBIC)
    m = flow_eval.eval_margin(truth)
    diff = np.abs(back - prev.astype(np.float32))[m:-m, m:-m]
    assert diff.mean() < 2.5  # a wrong sign or scale of d gives tens of grey levels
    wrong = cv2.remap(nxt.astype(np.float32), xs - truth[..., 0], ys - truth[..., 1], cv2.INTER_CUBIC)
    if np.abs(truth).max() > 0.5:
        assert np.abs(wrong - prev)[m:-m, m:-m].mean() > 2 * diff.mean()


def test_flo_round_trip_and_errors(tmp_path):
    flow = np.random.default_rng(0).normal(size=(5, 7, 2)).astype(np.float32)
    path = flow_eval.write_flo(tmp_path / "a.flo", flow)
    assert path.read_bytes()[:4] == b"PIEH"  # the Middlebury magic as bytes
    np.testing.assert_array_equal(flow_eval.read_flo(path), flow)
    (tmp_path / "bad.flo").write_bytes(b"nope" + bytes(20))
    with pytest.raises(ValueError, match="bad.flo: not a Middlebury"):
        flow_eval.read_flo(tmp_path / "bad.flo")
    (tmp_path / "short.flo").write_bytes(path.read_bytes()[:-8])
    with pytest.raises(ValueError, match="short.flo: .flo header says 7x5"):
        flow_eval.read_flo(tmp_path / "short.flo")


def test_scores_are_epe_and_outliers():
    case = flow_eval.builtin_case("shift_pixels", 32, 40, pairs=2)
    perfect = flow_eval.score(case.truth.copy(), case, seconds=0.5)
    assert perfect.epe == 0 and perfect.outliers == 0 and perfect.pairs_per_s == pytest.approx(4.0)
    off = case.truth + np.array([3.0, 4.0], np.float32)  # 5 px end-point error everywhere
    s = flow_eval.score(off, case, 1.0)
    assert s.epe == pytest.approx(5.0) and s.outliers == 1.0
    half = case.truth.copy()
    half[:, :, :20] += np.array([0.0, 2.0], np.float32)  # 2 px on the left half: not an outlier
    s = flow_eval.score(half, case, 1.0)
    assert 0 < s.epe < 2 and s.outliers == 0


def test_user_pair_skips_unknown_flow(tmp_path):
    prev, nxt, truth = flow_eval.photo_pair("shift_pixels", 48, 64, seed=1)
    cv2.imwrite(str(tmp_path / "a.png"), prev)
    cv2.imwrite(str(tmp_path / "b.png"), nxt)
    gt = truth.copy()
    gt[:10] = 1e10  # unknown (Middlebury's marker)
    flow_eval.write_flo(tmp_path / "gt.flo", gt)
    case = flow_eval.file_case(tmp_path / "a.png", tmp_path / "b.png", tmp_path / "gt.flo")
    assert case.valid.sum() == 38 * 64 and case.max_motion < 5
    est = np.where(case.valid[..., None], case.truth, 99.0)
    assert flow_eval.score(est, case, 1.0).epe == 0
    flow_eval.write_flo(tmp_path / "small.flo", truth[:40])
    with pytest.raises(ValueError, match="small.flo: ground truth of 64x40 for frames of 64x48"):
        flow_eval.file_case(tmp_path / "a.png", tmp_path / "b.png", tmp_path / "small.flo")
    with pytest.raises(ValueError, match="missing.png: not a readable image"):
        flow_eval.file_case(tmp_path / "missing.png", tmp_path / "b.png", tmp_path / "gt.flo")


def test_evaluate_scores_a_real_estimator():
    cases = flow_eval.builtin_cases(64, 80, pairs=1, motions=("shift_subpixel", "smooth_field"))
    scores = flow_eval.evaluate(Farneback(), cases)
    assert [s.name for s in scores] == ["shift_subpixel", "smooth_field"]
    assert all(0 < s.epe < 0.5 and s.outliers < 0.01 and s.pairs_per_s > 0 for s in scores)
    table = flow_eval.format_table(scores)
    assert table[0].split()[:3] == ["CASE", "PAIRS", "SIZE"] and table[-1].startswith("all")


def test_bench_uses_the_same_implementation():
    from bench import gpu_flow

    assert gpu_flow.motion_batch is flow_eval.motion_batch and gpu_flow.mean_epe is flow_eval.mean_epe
    assert gpu_flow.evaluate is flow_eval.evaluate and gpu_flow.builtin_cases is flow_eval.builtin_cases
