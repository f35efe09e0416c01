"""Which frames and flow fields a clip uses: pure, seeded functions.

A clip (a "snippet" in TSN's words) is one RGB frame and the L consecutive flow fields
centred on it (Simonyan & Zisserman 2014): for a frame t and L = 10 the fields start at
frames t-5 ... t+4, so field L // 2 of the clip starts at the clip's frame.

Every function works on *candidates*: the clips a sample can give. A dense video sample
of F fields has F - L + 1 candidates (one per first field); a sample built in clips mode
has the clips its metadata lists; a clip sample has exactly one. The three samplers only
choose candidate indices:

    simonyan  one random candidate per video per epoch (training)
    tsn       K equal segments, one candidate from each (training: random within the
              segment; test: the segment's middle); the model averages their scores
    uniform   N evenly spaced candidates (test time, 25 by default), scores averaged per video
"""
from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass

SAMPLERS = ("simonyan", "tsn")
DEFAULT_CLIP_LEN = 10
DEFAULT_SEGMENTS = 3
DEFAULT_TEST_CLIPS = 25


@dataclass(frozen=True)
class Clip:
    """Positions (not global indices) of one clip's RGB frame and flow fields in a sample."""

    frame: int
    fields: tuple[int, ...]


def sample_rng(seed: int, epoch: int, key: str) -> random.Random:
    """A generator that depends only on (seed, epoch, sample key), not on worker or order.

    So the clip a video gives in an epoch is the same however shards are split between
    ranks and loader workers, and a resumed run draws what an uninterrupted one would.
    """
    digest = hashlib.sha256(f"{seed}/{epoch}/{key}".encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "little"))


def simonyan_index(num_candidates: int, rng: random.Random) -> int:
    """One candidate drawn uniformly."""
    _check_candidates(num_candidates)
    return rng.randrange(num_candidates)


def tsn_indices(num_candidates: int, segments: int, rng: random.Random | None) -> list[int]:
    """One candidate from each of `segments` equal segments (TSN's sparse sampling).

    With rng=None each segment gives its middle candidate (TSN's test-time choice).
    A video with fewer candidates than segments repeats candidates, as TSN does.
    """
    _check_candidates(num_candidates)
    if segments < 1:
        raise ValueError(f"segments must be >= 1, got {segments}")
    width = num_candidates / segments
    picks = []
    for k in range(segments):
        lo = int(k * width)
        hi = max(lo + 1, int((k + 1) * width))
        picks.append(lo + (hi - lo) // 2 if rng is None else rng.randrange(lo, hi))
    return [min(p, num_candidates - 1) for p in picks]


def uniform_indices(num_candidates: int, n: int) -> list[int]:
    """`n` evenly spaced candidates, each at the middle of its 1/n of the video (TSN test).

    A video with fewer candidates than n gives each candidate once: repeating a clip
    would only re-weight the video-level average.
    """
    _check_candidates(num_candidates)
    if n < 1:
        raise ValueError(f"the number of test clips must be >= 1, got {n}")
    if num_candidates <= n:
        return list(range(num_candidates))
    tick = num_candidates / n
    return [int(tick / 2 + tick * i) for i in range(n)]


def random_indices(num_candidates: int, n: int, rng: random.Random) -> list[int]:
    """`n` distinct candidates drawn at random, sorted in time (all of them when fewer)."""
    _check_candidates(num_candidates)
    return sorted(rng.sample(range(num_candidates), min(n, num_candidates)))


def _check_candidates(num_candidates: int) -> None:
    if num_candidates < 1:
        raise ValueError(f"a sample needs at least one candidate clip, got {num_candidates}")


# --- candidates of a sample -------------------------------------------------------------

def centred_fields(fields: list[int] | tuple[int, ...], clip_len: int) -> tuple[int, ...]:
    """The `clip_len` fields centred like the stored clip: field clip_len // 2 starts at its frame.

    A stored clip of Ls fields has its frame at field Ls // 2, so taking fields from
    Ls // 2 - clip_len // 2 keeps the frame at the centre of the shorter stack.
    """
    stored = len(fields)
    if clip_len > stored:
        raise ValueError(f"clip_len {clip_len} is longer than the stored clip of {stored} flow fields")
    start = stored // 2 - clip_len // 2
    return tuple(fields[start:start + clip_len])


@dataclass(frozen=True)
class Candidates:
    """The clips of one sample (see the module docstring), built from its metadata."""

    clip_len: int
    count: int
    stored: tuple[Clip, ...] = ()  # clips-mode samples: the stored clips
    frame_of_field: tuple[int, ...] = ()  # dense samples: frame position at each field's start
    num_fields: int = 0

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, i: int) -> Clip:
        if not 0 <= i < self.count:
            raise IndexError(f"candidate {i} out of range [0, {self.count})")
        if self.stored:
            return self.stored[i]
        # Short videos repeat their last field, so every candidate has exactly L fields.
        fields = tuple(min(i + j, self.num_fields - 1) for j in range(self.clip_len))
        return Clip(frame=self.frame_of_field[fields[self.clip_len // 2]], fields=fields)


def candidates(meta: dict, clip_len: int) -> Candidates:
    """The candidate clips of a video sample (dense or clips mode) for stacks of `clip_len`.

    clip_len = 0 means RGB only: every frame is a candidate and no field is used.
    """
    if clip_len < 0:
        raise ValueError(f"clip_len must be >= 0, got {clip_len}")
    if meta.get("mode") == "clips":
        stored = tuple(Clip(frame=int(c["frame"]), fields=centred_fields(c["flow"], clip_len))
                       for c in meta.get("clips", []))
        return Candidates(clip_len=clip_len, count=len(stored), stored=stored)
    frames, fields = meta["frames"], meta["flow_fields"]
    if clip_len == 0:
        stored = tuple(Clip(frame=i, fields=()) for i in range(len(frames)))
        return Candidates(clip_len=0, count=len(stored), stored=stored)
    position = {int(f["index"]): i for i, f in enumerate(frames)}
    frame_of_field = tuple(_frame_position(int(f["from"]), position, frames) for f in fields)
    count = max(1, len(fields) - clip_len + 1) if fields else 0
    return Candidates(clip_len=clip_len, count=count, frame_of_field=frame_of_field, num_fields=len(fields))


def _frame_position(index: int, position: dict[int, int], frames: list[dict]) -> int:
    """Position of the stored frame with global `index`, else of the nearest stored frame."""
    if index in position:
        return position[index]
    return min(range(len(frames)), key=lambda i: abs(int(frames[i]["index"]) - index))


def train_clips(cands: Candidates, sampler: str, segments: int, rng: random.Random) -> list[Clip]:
    """The snippets of one training item: 1 (simonyan) or `segments` (tsn)."""
    if sampler == "simonyan":
        return [cands[simonyan_index(len(cands), rng)]]
    if sampler == "tsn":
        return [cands[i] for i in tsn_indices(len(cands), segments, rng)]
    raise ValueError(f"unknown sampler {sampler!r}; choose one of {SAMPLERS}")


def eval_clips(cands: Candidates, n: int) -> list[Clip]:
    """The `n` uniformly spaced test clips of a video."""
    return [cands[i] for i in uniform_indices(len(cands), n)]
