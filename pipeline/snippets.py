"""What a snippet and a clip are: pure, seeded functions that both the clip deriver
(pipeline.clips) and the trainer (training.data) use, so the two never disagree.

A *snippet* (TSN's word) is what one stream step of a two-stream network sees: F RGB
frames (F = 1 for the spatial stream, F = 16 for C3D) and the L consecutive flow fields
centred on them (Simonyan & Zisserman 2014): for a centre frame t and L = 10 the fields
start at frames t-5 ... t+4, so field L // 2 of the snippet starts at the snippet's frame.
The F frames are `frame_stride` stored frames apart and centred the same way: frame F // 2
is the centre frame.

A *clip* is the K snippets of one training item, in time order: 1 (Simonyan), K segments
spread over the whole video (TSN), or T snippets `stride` frames apart (Feichtenhofer et
al.'s temporal pooling; several strides for multi-timescale sampling).

Every function works on *candidates*: the snippets a sample can give. A dense video sample
of N fields has N - L + 1 candidates (one per first field; candidate i's centre frame is
the frame field i + L // 2 starts at, so candidates are one stored frame apart); an
RGB-only reader (L = 0) has one candidate per frame window. A sample built in clips mode
has the clips its metadata lists; a clip sample has exactly its stored snippets. The
samplers only choose candidate indices:

    simonyan  one random candidate per video per epoch (training)
    tsn       K equal segments, one candidate from each (training: random within the
              segment; test: the segment's middle); the model averages their scores
    strided   T candidates `stride` apart from a random start (training, stride drawn from
              the strides given: multi-timescale); at test N evenly spaced starts per stride;
              strides whose T snippets do not fit in a video are left out for it
    uniform   N evenly spaced candidates (test time, 25 by default), scores averaged per video
    every     at test, every k-th candidate from the first: clips k frames apart over the whole
              video (`test_every`; C3D's features: 16-frame clips every 8 frames)

Indices that would fall outside a short video are clamped to its first or last frame or
field (the edge is repeated), so every video with at least one field gives a clip.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass

SAMPLERS = ("simonyan", "tsn", "strided")
DEFAULT_CLIP_LEN = 10
DEFAULT_SEGMENTS = 3
DEFAULT_TEST_CLIPS = 25


@dataclass(frozen=True)
class Snippet:
    """Positions (not global indices) of one snippet's RGB frames and flow fields in a sample."""

    frames: tuple[int, ...]
    fields: tuple[int, ...]

    @property
    def frame(self) -> int:
        """The centre frame: the one the flow stack is centred on."""
        return self.frames[len(self.frames) // 2]


Clip = tuple[Snippet, ...]


@dataclass(frozen=True, kw_only=True)
class SnippetShape:
    """How many frames and fields one snippet holds, and how far apart its frames are."""

    clip_len: int = DEFAULT_CLIP_LEN  # L flow fields (0: RGB only)
    rgb_frames: int = 1  # F frames
    frame_stride: int = 1  # stored frames between consecutive RGB frames of a snippet

    def __post_init__(self) -> None:
        if self.clip_len < 0:
            raise ValueError(f"clip_len must be >= 0, got {self.clip_len}")
        if self.rgb_frames < 1 or self.frame_stride < 1:
            raise ValueError(f"rgb_frames and frame_stride must be >= 1, got {self.rgb_frames}, {self.frame_stride}")

    @property
    def frame_span(self) -> int:
        """Stored frames from a snippet's first RGB frame to its last, inclusive."""
        return (self.rgb_frames - 1) * self.frame_stride + 1

    def frame_offsets(self) -> tuple[int, ...]:
        """Offsets of the F frames from the centre frame."""
        half = self.rgb_frames // 2
        return tuple((j - half) * self.frame_stride for j in range(self.rgb_frames))


def sample_rng(seed: int, epoch: int, key: str) -> random.Random:
    """A generator that depends only on (seed, epoch, sample key), not on worker or order.

    So the clip a video gives in an epoch is the same however shards are split between
    ranks and loader workers, and a resumed run draws what an uninterrupted one would.
    """
    digest = hashlib.sha256(f"{seed}/{epoch}/{key}".encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "little"))


# --- index choices -------------------------------------------------------------------------


def simonyan_index(num_candidates: int, rng: random.Random) -> int:
    """One candidate drawn uniformly."""
    _check_candidates(num_candidates)
    return rng.randrange(num_candidates)


def tsn_indices(num_candidates: int, segments: int, rng: random.Random | None) -> list[int]:
    """One candidate from each of `segments` equal segments (TSN's sparse sampling).

    With rng=None each segment gives its middle candidate (TSN's test-time choice).
    A video with fewer candidates than segments repeats candidates, as TSN does.
    """
    if rng is None:
        return tsn_test_indices(num_candidates, segments, 1)[0]
    return [min(rng.randrange(lo, hi), num_candidates - 1) for lo, hi in _segments(num_candidates, segments)]


def _segments(num_candidates: int, segments: int) -> list[tuple[int, int]]:
    """[lo, hi) candidate ranges of `segments` equal segments (each at least one wide)."""
    _check_candidates(num_candidates)
    if segments < 1:
        raise ValueError(f"segments must be >= 1, got {segments}")
    width = num_candidates / segments
    return [(int(k * width), max(int(k * width) + 1, int((k + 1) * width))) for k in range(segments)]


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


def tsn_test_indices(num_candidates: int, segments: int, n: int) -> list[list[int]]:
    """`n` ordered clips of one candidate per segment, clip j at (j + 1/2) / n of every segment
    (TSN's middle-of-segment choice when n = 1); clips that coincide on a short video are kept once."""
    if n < 1:
        raise ValueError(f"the number of test clips must be >= 1, got {n}")
    bounds = _segments(num_candidates, segments)
    clips: list[list[int]] = []
    for j in range(n):
        clip = [min(lo + (2 * j + 1) * (hi - lo) // (2 * n), num_candidates - 1) for lo, hi in bounds]
        if clip not in clips:
            clips.append(clip)
    return clips


def every_indices(num_candidates: int, every: int) -> list[int]:
    """Candidates 0, every, 2 * every, ...: clips `every` frames apart from the video's start."""
    _check_candidates(num_candidates)
    if every < 1:
        raise ValueError(f"clips must be >= 1 frame apart, got {every}")
    return list(range(0, num_candidates, every))


def random_indices(num_candidates: int, n: int, rng: random.Random) -> list[int]:
    """`n` distinct candidates drawn at random, sorted in time (all of them when fewer)."""
    _check_candidates(num_candidates)
    return sorted(rng.sample(range(num_candidates), min(n, num_candidates)))


def strided_indices(num_candidates: int, snippets: int, stride: int, start: int) -> list[int]:
    """`snippets` candidates `stride` apart from `start`, clamped to the last candidate."""
    _check_candidates(num_candidates)
    if snippets < 1 or stride < 1:
        raise ValueError(f"snippets and stride must be >= 1, got {snippets}, {stride}")
    return [min(start + k * stride, num_candidates - 1) for k in range(snippets)]


def fitting_strides(num_candidates: int, snippets: int, strides: tuple[int, ...]) -> tuple[int, ...]:
    """The strides at which `snippets` candidates fit in the video, else the shortest one.

    Multi-timescale sampling uses only these: a longer stride would clamp its last snippets
    to the video's end and repeat them, a clip of another time scale than its stride says.
    """
    fit = tuple(s for s in strides if (snippets - 1) * s < num_candidates)
    return fit or (min(strides),)


def strided_starts(num_candidates: int, snippets: int, stride: int) -> int:
    """How many starts keep all `snippets` candidates inside the video (at least 1)."""
    return max(1, num_candidates - (snippets - 1) * stride)


def _check_candidates(num_candidates: int) -> None:
    if num_candidates < 1:
        raise ValueError(f"a sample needs at least one candidate snippet, got {num_candidates}")


# --- candidates of a sample -----------------------------------------------------------------


def centred(positions: list[int] | tuple[int, ...], length: int, what: str = "flow fields") -> tuple[int, ...]:
    """The `length` items centred like the stored ones: item length // 2 stays at the centre.

    A stored stack of Ls fields has its frame at field Ls // 2, so taking fields from
    Ls // 2 - length // 2 keeps the frame at the centre of the shorter stack (the same
    rule picks F frames out of a longer stored run of frames).
    """
    stored = len(positions)
    if length > stored:
        raise ValueError(f"{what}: {length} asked for, the stored snippet holds {stored}")
    start = stored // 2 - length // 2
    return tuple(positions[start : start + length])


@dataclass(frozen=True)
class Candidates:
    """The snippets of one sample (see the module docstring), built from its metadata."""

    shape: SnippetShape
    count: int
    stored: tuple[Snippet, ...] = ()  # clips-mode samples and clip samples: the stored snippets
    frame_of_field: tuple[int, ...] = ()  # dense samples: frame position at each field's start
    num_fields: int = 0
    num_frames: int = 0

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, i: int) -> Snippet:
        if not 0 <= i < self.count:
            raise IndexError(f"candidate {i} out of range [0, {self.count})")
        if self.stored:
            return self.stored[i]
        shape = self.shape
        if shape.clip_len == 0:  # RGB only: candidate i's first frame is frame i
            centre = i + shape.rgb_frames // 2 * shape.frame_stride
            return Snippet(frames=self._frames(centre), fields=())
        fields = tuple(min(i + j, self.num_fields - 1) for j in range(shape.clip_len))
        return Snippet(frames=self._frames(self.frame_of_field[fields[shape.clip_len // 2]]), fields=fields)

    def _frames(self, centre: int) -> tuple[int, ...]:
        last = self.num_frames - 1
        return tuple(min(max(centre + d, 0), last) for d in self.shape.frame_offsets())


def candidates(meta: dict, shape: SnippetShape | int) -> Candidates:
    """The candidate snippets of a video sample (dense or clips mode) for `shape`.

    An int is taken as clip_len with one RGB frame per snippet. clip_len = 0 means RGB
    only: every window of F frames is a candidate and no field is used.
    """
    if isinstance(shape, int):
        shape = SnippetShape(clip_len=shape)
    if meta.get("mode") == "clips":
        return _clips_mode(meta, shape)
    frames, fields = meta["frames"], meta["flow_fields"]
    if shape.clip_len == 0:
        count = max(1, len(frames) - shape.frame_span + 1) if frames else 0
        return Candidates(shape=shape, count=count, num_frames=len(frames))
    position = {int(f["index"]): i for i, f in enumerate(frames)}
    frame_of_field = tuple(_frame_position(int(f["from"]), position, frames) for f in fields)
    count = max(1, len(fields) - shape.clip_len + 1) if fields else 0
    return Candidates(
        shape=shape, count=count, frame_of_field=frame_of_field, num_fields=len(fields), num_frames=len(frames)
    )


def _clips_mode(meta: dict, shape: SnippetShape) -> Candidates:
    """A `build --clips` sample stores one frame per clip: F > 1 needs a dense build."""
    if shape.rgb_frames > 1:
        raise ValueError(
            f"rgb_frames {shape.rgb_frames} needs runs of frames; this sample was built with "
            "--clips and stores one frame per clip (build the dataset densely)"
        )
    stored = tuple(
        Snippet(frames=(int(c["frame"]),), fields=centred(c["flow"], shape.clip_len)) for c in meta.get("clips", [])
    )
    return Candidates(shape=shape, count=len(stored), stored=stored)


def _frame_position(index: int, position: dict[int, int], frames: list[dict]) -> int:
    """Position of the stored frame with global `index`, else of the nearest stored frame."""
    if index in position:
        return position[index]
    return min(range(len(frames)), key=lambda i: abs(int(frames[i]["index"]) - index))


# --- clips ------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class ClipSpec:
    """How an item's snippets are chosen: the sampler and its counts."""

    sampler: str = "simonyan"
    segments: int = DEFAULT_SEGMENTS  # tsn: K
    snippets: int = 1  # strided: T
    strides: tuple[int, ...] = (1,)  # strided: candidates between snippets; several = multi-timescale
    test_clips: int = DEFAULT_TEST_CLIPS
    # tsn: the network reads the K segments' snippets as one clip in time order (a Siamese
    # precondition/effect network), so each test clip holds K snippets too, not one.
    ordered: bool = False
    # test clips of one snippet: 0 = `test_clips` evenly spaced; k = every k-th candidate (k frames apart)
    test_every: int = 0

    def __post_init__(self) -> None:
        if self.sampler not in SAMPLERS:
            raise ValueError(f"unknown sampler {self.sampler!r}; choose one of {SAMPLERS}")
        if self.segments < 1 or self.snippets < 1 or self.test_clips < 1:
            raise ValueError(
                f"segments, snippets and test_clips must be >= 1, got "
                f"{self.segments}, {self.snippets}, {self.test_clips}"
            )
        if not self.strides or min(self.strides) < 1:
            raise ValueError(f"strides must be positive integers, got {self.strides}")
        if self.test_every < 0:
            raise ValueError(f"test_every must be >= 0, got {self.test_every}")
        if self.test_every and (self.sampler == "strided" or self.ordered):
            raise ValueError(
                f"test clips every {self.test_every} frames are single snippets; sampler "
                f"{self.sampler!r}{' (ordered)' if self.ordered else ''} tests clips of several"
            )

    @property
    def length(self) -> int:
        """K: snippets per clip."""
        return {"simonyan": 1, "tsn": self.segments, "strided": self.snippets}[self.sampler]


def check_frame_strides(cands: Candidates, snippets: int) -> None:
    """Strides count stored frames: refuse T > 1 snippets on a sample whose candidates are not
    one frame apart (a `build --clips` sample keeps a few separate clips per video)."""
    if snippets > 1 and cands.stored:
        raise ValueError(
            f"strided clips of {snippets} snippets are a stride of frames apart, but this sample was "
            "built with --clips and keeps separate clips, not every frame: build the dataset densely"
        )


def train_clip(cands: Candidates, spec: ClipSpec, rng: random.Random) -> Clip:
    """The snippets of one training item: 1 (simonyan), K segments (tsn) or T strided."""
    n = len(cands)
    if spec.sampler == "simonyan":
        return (cands[simonyan_index(n, rng)],)
    if spec.sampler == "tsn":
        return tuple(cands[i] for i in tsn_indices(n, spec.segments, rng))
    check_frame_strides(cands, spec.snippets)
    stride = rng.choice(fitting_strides(n, spec.snippets, spec.strides))
    start = rng.randrange(strided_starts(n, spec.snippets, stride))
    return tuple(cands[i] for i in strided_indices(n, spec.snippets, stride, start))


def eval_clips(cands: Candidates, spec: ClipSpec) -> list[Clip]:
    """The clips a video is scored on (their scores are averaged per video).

    simonyan and tsn: `test_clips` evenly spaced single snippets (TSN's test protocol: 25
    snippets, scores averaged), or with `test_every` k every k-th candidate; ordered tsn:
    `test_clips` clips of one snippet per segment
    (`tsn_test_indices`); strided: per stride that fits the video, `test_clips` evenly spaced
    starts of T snippets each, so every time scale covers the whole video.
    """
    n = len(cands)
    if spec.sampler == "tsn" and spec.ordered:
        return [tuple(cands[i] for i in idx) for idx in tsn_test_indices(n, spec.segments, spec.test_clips)]
    if spec.test_every:
        if cands.stored:
            raise ValueError(
                f"clips every {spec.test_every} frames need every frame; this sample keeps separate "
                "clips (built with --clips, or clip shards): use evenly spaced test clips"
            )
        return [(cands[i],) for i in every_indices(n, spec.test_every)]
    if spec.sampler != "strided":
        return [(cands[i],) for i in uniform_indices(n, spec.test_clips)]
    check_frame_strides(cands, spec.snippets)
    out: list[Clip] = []
    for stride in fitting_strides(n, spec.snippets, spec.strides):
        starts = strided_starts(n, spec.snippets, stride)
        out.extend(
            tuple(cands[i] for i in strided_indices(n, spec.snippets, stride, s))
            for s in uniform_indices(starts, spec.test_clips)
        )
    return out
