"""Clip sampling: Simonyan clips, TSN segments, uniform test clips, candidates of a sample."""
from __future__ import annotations

import random

import pytest

from training import sampling
from training.sampling import Clip


def dense_meta(frames: int, step: int = 1, first: int = 0) -> dict:
    return {"mode": "dense", "frames": [{"index": first + i, "pts": i / 25} for i in range(frames)],
            "flow_fields": [{"from": first + i, "to": first + i + step} for i in range(frames - step)], "clips": []}


def test_simonyan_clip_is_centred_on_its_frame():
    cands = sampling.candidates(dense_meta(30), clip_len=10)
    assert len(cands) == 29 - 10 + 1
    for i in range(len(cands)):
        clip = cands[i]
        assert clip.fields == tuple(range(i, i + 10))
        # The frame starts field L // 2: 5 fields before it, 5 from it on (Simonyan: t-L/2 .. t+L/2-1).
        assert clip.frame == clip.fields[5]


def test_candidates_follow_global_indices_of_a_later_part():
    # A second part of a long video: global indices start at 1500, positions at 0.
    cands = sampling.candidates(dense_meta(20, first=1500), clip_len=4)
    assert cands[0] == Clip(frame=2, fields=(0, 1, 2, 3))


def test_short_video_repeats_its_last_field():
    cands = sampling.candidates(dense_meta(5), clip_len=10)  # 4 fields
    assert len(cands) == 1
    assert cands[0].fields == (0, 1, 2, 3, 3, 3, 3, 3, 3, 3)


def test_video_without_fields_has_no_flow_candidates_but_rgb_ones():
    meta = dense_meta(1)
    assert len(sampling.candidates(meta, clip_len=10)) == 0
    assert len(sampling.candidates(meta, clip_len=0)) == 1


def test_clips_mode_candidates_take_the_centred_subset():
    meta = {"mode": "clips", "frames": [], "flow_fields": [],
            "clips": [{"frame": 5, "flow": list(range(0, 10))}, {"frame": 15, "flow": list(range(10, 20))}]}
    cands = sampling.candidates(meta, clip_len=4)
    assert [c.frame for c in cands.stored] == [5, 15]
    assert cands[0].fields == (3, 4, 5, 6)  # field 5 starts at the frame, as field 2 of 4 must
    with pytest.raises(ValueError, match="clip_len 12"):
        sampling.candidates(meta, clip_len=12)


def test_tsn_takes_one_candidate_per_segment():
    rng = random.Random(0)
    for _ in range(50):
        picks = sampling.tsn_indices(30, 3, rng)
        assert 0 <= picks[0] < 10 <= picks[1] < 20 <= picks[2] < 30
    assert sampling.tsn_indices(30, 3, None) == [5, 15, 25]
    assert sampling.tsn_indices(2, 3, None) == [0, 0, 1]  # fewer candidates than segments: repeats


def test_uniform_test_clips_are_evenly_spaced():
    assert sampling.uniform_indices(100, 4) == [12, 37, 62, 87]
    assert sampling.uniform_indices(3, 25) == [0, 1, 2]
    with pytest.raises(ValueError, match="test clips"):
        sampling.uniform_indices(10, 0)


def test_random_indices_are_distinct_and_sorted():
    picks = sampling.random_indices(50, 8, random.Random(1))
    assert picks == sorted(set(picks)) and len(picks) == 8


def test_sample_rng_depends_on_seed_epoch_and_key_only():
    a = [sampling.sample_rng(0, 1, "k").random() for _ in range(2)]
    assert a[0] == a[1]
    assert sampling.sample_rng(0, 2, "k").random() != a[0]
    assert sampling.sample_rng(1, 1, "k").random() != a[0]


def test_train_and_eval_clips():
    cands = sampling.candidates(dense_meta(40), clip_len=10)
    assert len(sampling.train_clips(cands, "simonyan", 3, random.Random(0))) == 1
    assert len(sampling.train_clips(cands, "tsn", 3, random.Random(0))) == 3
    assert len(sampling.eval_clips(cands, 25)) == 25
    with pytest.raises(ValueError, match="unknown sampler"):
        sampling.train_clips(cands, "dense", 3, random.Random(0))
    with pytest.raises(ValueError, match="at least one candidate"):
        sampling.simonyan_index(0, random.Random(0))
