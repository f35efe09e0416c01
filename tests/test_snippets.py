"""Snippets and clips: Simonyan clips, TSN segments, strided multi-timescale clips, RGB runs, candidates."""
from __future__ import annotations

import random

import pytest

from pipeline import snippets as sampling
from pipeline.snippets import ClipSpec, Snippet, SnippetShape


def dense_meta(frames: int, step: int = 1, first: int = 0) -> dict:
    return {"mode": "dense", "frames": [{"index": first + i, "pts": i / 25} for i in range(frames)],
            "flow_fields": [{"from": first + i, "to": first + i + step} for i in range(frames - step)], "clips": []}


def test_simonyan_clip_is_centred_on_its_frame():
    cands = sampling.candidates(dense_meta(30), 10)
    assert len(cands) == 29 - 10 + 1
    for i in range(len(cands)):
        clip = cands[i]
        assert clip.fields == tuple(range(i, i + 10))
        # The frame starts field L // 2: 5 fields before it, 5 from it on (Simonyan: t-L/2 .. t+L/2-1).
        assert clip.frame == clip.fields[5]


def test_candidates_follow_global_indices_of_a_later_part():
    # A second part of a long video: global indices start at 1500, positions at 0.
    cands = sampling.candidates(dense_meta(20, first=1500), 4)
    assert cands[0] == Snippet(frames=(2,), fields=(0, 1, 2, 3))


def test_short_video_repeats_its_last_field():
    cands = sampling.candidates(dense_meta(5), 10)  # 4 fields
    assert len(cands) == 1
    assert cands[0].fields == (0, 1, 2, 3, 3, 3, 3, 3, 3, 3)


def test_video_without_fields_has_no_flow_candidates_but_rgb_ones():
    meta = dense_meta(1)
    assert len(sampling.candidates(meta, 10)) == 0
    assert len(sampling.candidates(meta, 0)) == 1


def test_clips_mode_candidates_take_the_centred_subset():
    meta = {"mode": "clips", "frames": [], "flow_fields": [],
            "clips": [{"frame": 5, "flow": list(range(0, 10))}, {"frame": 15, "flow": list(range(10, 20))}]}
    cands = sampling.candidates(meta, 4)
    assert [c.frame for c in cands.stored] == [5, 15]
    assert cands[0].fields == (3, 4, 5, 6)  # field 5 starts at the frame, as field 2 of 4 must
    with pytest.raises(ValueError, match="12 asked for"):
        sampling.candidates(meta, 12)
    with pytest.raises(ValueError, match="built with --clips"):
        sampling.candidates(meta, SnippetShape(clip_len=4, rgb_frames=3))


def test_ordered_tsn_test_clips_take_one_candidate_per_segment_in_time_order():
    # 30 candidates, 3 segments of 10, 2 clips: at 1/4 and 3/4 of every segment
    assert sampling.tsn_test_indices(30, 3, 2) == [[2, 12, 22], [7, 17, 27]]
    assert sampling.tsn_test_indices(30, 3, 1) == [sampling.tsn_indices(30, 3, None)]  # TSN's middle choice
    assert sampling.tsn_test_indices(3, 3, 4) == [[0, 1, 2]]  # one candidate per segment: one clip, once
    cands = sampling.candidates(dense_meta(31), 1)
    clips = sampling.eval_clips(cands, ClipSpec(sampler="tsn", segments=4, test_clips=3, ordered=True))
    assert len(clips) == 3 and all(len(c) == 4 for c in clips)
    assert all([s.fields[0] for s in c] == sorted(s.fields[0] for s in c) for c in clips)


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
    cands = sampling.candidates(dense_meta(40), 10)
    rng = random.Random(0)
    assert len(sampling.train_clip(cands, ClipSpec(sampler="simonyan"), rng)) == 1
    assert len(sampling.train_clip(cands, ClipSpec(sampler="tsn", segments=3), rng)) == 3
    assert len(sampling.eval_clips(cands, ClipSpec(test_clips=25))) == 25
    # TSN is tested as TSN does: 25 single snippets, scores averaged per video.
    assert {len(c) for c in sampling.eval_clips(cands, ClipSpec(sampler="tsn", test_clips=5))} == {1}
    with pytest.raises(ValueError, match="unknown sampler"):
        ClipSpec(sampler="dense")
    with pytest.raises(ValueError, match="at least one candidate"):
        sampling.simonyan_index(0, random.Random(0))


def test_strided_clips_are_T_snippets_a_stride_apart_with_the_stride_drawn_per_clip():
    cands = sampling.candidates(dense_meta(60), 4)  # 56 candidates, one frame apart
    spec = ClipSpec(sampler="strided", snippets=3, strides=(1, 5, 10))
    seen = set()
    for seed in range(60):
        clip = sampling.train_clip(cands, spec, random.Random(seed))
        frames = [s.frame for s in clip]
        steps = {b - a for a, b in zip(frames, frames[1:])}
        assert len(clip) == 3 and len(steps) == 1
        seen |= steps
        assert all(len(s.fields) == 4 for s in clip) and frames[-1] <= 59
    assert seen == {1, 5, 10}  # every time scale is drawn
    # At test: per stride, evenly spaced starts that cover the video.
    tests = sampling.eval_clips(cands, ClipSpec(sampler="strided", snippets=3, strides=(1, 10), test_clips=4))
    assert len(tests) == 8
    assert [c[1].frame - c[0].frame for c in tests] == [1] * 4 + [10] * 4
    starts = [c[0].frame for c in tests[4:]]
    assert starts == sorted(starts) and starts[-1] - starts[0] > 20


def test_strided_clips_need_frames_one_apart_not_clips_kept_by_a_clips_build():
    meta = {"mode": "clips", "frames": [], "flow_fields": [],
            "clips": [{"frame": 10 * i + 5, "flow": list(range(10 * i, 10 * i + 10))} for i in range(6)]}
    cands = sampling.candidates(meta, 4)
    spec = ClipSpec(sampler="strided", snippets=3, strides=(5,))
    with pytest.raises(ValueError, match="built with --clips"):
        sampling.train_clip(cands, spec, random.Random(0))
    with pytest.raises(ValueError, match="built with --clips"):
        sampling.eval_clips(cands, spec)
    single = ClipSpec(sampler="strided", snippets=1, strides=(5,))  # one snippet: no stride to measure
    assert len(sampling.train_clip(cands, single, random.Random(0))) == 1


def test_multi_timescale_sampling_leaves_out_strides_a_short_video_cannot_hold():
    cands = sampling.candidates(dense_meta(24), 4)  # 20 candidates: 3 snippets fit at strides 1 and 5, not 10
    spec = ClipSpec(sampler="strided", snippets=3, strides=(1, 5, 10), test_clips=2)
    drawn = {sampling.train_clip(cands, spec, random.Random(s))[1].frame
             - sampling.train_clip(cands, spec, random.Random(s))[0].frame for s in range(40)}
    assert drawn == {1, 5}
    tests = sampling.eval_clips(cands, spec)
    assert [c[1].frame - c[0].frame for c in tests] == [1, 1, 5, 5]
    assert sampling.fitting_strides(5, 3, (5, 10)) == (5,)  # none fits: the shortest, clamped


def test_strided_clips_of_a_short_video_clamp_to_its_last_snippet():
    cands = sampling.candidates(dense_meta(8), 4)  # 4 candidates
    clip = sampling.train_clip(cands, ClipSpec(sampler="strided", snippets=3, strides=(5,)), random.Random(0))
    assert [s.fields[0] for s in clip] == [0, 3, 3]


def test_rgb_runs_are_centred_on_the_flow_stack_and_clamped_at_the_edges():
    shape = SnippetShape(clip_len=4, rgb_frames=3, frame_stride=2)
    cands = sampling.candidates(dense_meta(30), shape)
    snip = cands[10]
    assert snip.fields == (10, 11, 12, 13) and snip.frame == 12
    assert snip.frames == (10, 12, 14)
    assert cands[0].frames == (0, 2, 4)  # frame 2 is the centre; 0 is in range
    # RGB only: one candidate per window of F frames (C3D: 16 consecutive frames).
    c3d = sampling.candidates(dense_meta(30), SnippetShape(clip_len=0, rgb_frames=16))
    assert len(c3d) == 15 and c3d[0].frames == tuple(range(16)) and c3d[14].frames == tuple(range(14, 30))
    short = sampling.candidates(dense_meta(10), SnippetShape(clip_len=0, rgb_frames=16))
    assert len(short) == 1 and short[0].frames == tuple(range(10)) + (9,) * 6  # the last frame repeats


def test_centred_keeps_the_stored_centre():
    assert sampling.centred(list(range(10)), 4) == (3, 4, 5, 6)
    assert sampling.centred([7], 1) == (7,)


def test_test_clips_every_k_frames_cover_the_video_from_its_start():
    # C3D's features: 16-frame RGB clips every 8 frames. 40 frames hold windows starting at 0 ... 24.
    cands = sampling.candidates(dense_meta(40), SnippetShape(clip_len=0, rgb_frames=16))
    clips = sampling.eval_clips(cands, ClipSpec(test_every=8, test_clips=3))
    assert [c[0].frames[0] for c in clips] == [0, 8, 16, 24]
    assert all(c[0].frames == tuple(range(c[0].frames[0], c[0].frames[0] + 16)) for c in clips)
    assert sampling.every_indices(5, 8) == [0]  # a video shorter than two clips: one
    with pytest.raises(ValueError, match="single snippets"):
        ClipSpec(sampler="strided", snippets=3, test_every=8)
    stored = sampling.candidates({"mode": "clips", "frames": [], "flow_fields": [],
                                  "clips": [{"frame": 5, "flow": []}, {"frame": 15, "flow": []}]}, 0)
    with pytest.raises(ValueError, match="separate clips"):
        sampling.eval_clips(stored, ClipSpec(test_every=8))
