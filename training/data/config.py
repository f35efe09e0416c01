"""The loader's settings (DataConfig), validated when made."""

from __future__ import annotations

from dataclasses import dataclass, field

from pipeline import snippets as snip  # `snippets` is also a DataConfig field
from pipeline.snippets import ClipSpec, SnippetShape
from training import streams as stream_spec
from training.transforms import TransformConfig

VERIFY_MODES = ("stream", "open", "off")
ON_CORRUPT = ("error", "skip")  # a sample whose bytes miss its manifest hash: raise, or skip and count
TASKS = ("classify", "detect")  # detect: frames with their boxes (training.detection.data)


@dataclass(frozen=True, kw_only=True)
class DataConfig:
    """What the loader reads and how it samples, augments and batches.

    An item is a clip of K snippets (pipeline.snippets): K = 1 (simonyan), `segments`
    (tsn) or `snippets` (strided, `strides` apart); each snippet holds `rgb_frames` RGB
    frames `frame_stride` apart and `clip_len` flow fields.
    """

    streams: str = "both"
    clip_len: int = snip.DEFAULT_CLIP_LEN
    rgb_frames: int = 1
    frame_stride: int = 1
    sampler: str = "simonyan"
    segments: int = snip.DEFAULT_SEGMENTS
    snippets: int = 1
    strides: tuple[int, ...] = (1,)
    test_clips: int = snip.DEFAULT_TEST_CLIPS
    test_every: int = 0  # > 0: single-snippet test clips that many frames apart instead (ClipSpec.test_every)
    ordered: bool = False  # tsn: the model reads the K snippets as one ordered clip (ClipSpec.ordered)
    flow_mean_subtract: bool = False  # Simonyan & Zisserman: each field of a flow/warped input loses its mean
    transform: TransformConfig = field(default_factory=TransformConfig)
    batch_size: int = 32
    workers: int = 4
    shuffle_buffer: int = 500
    seed: int = 0
    verify: str = "stream"
    on_corrupt: str = "error"  # see ON_CORRUPT and training.data.integrity
    gpu_decode: bool = False  # decode JPEGs and augment on the training device (training.gpu_decode)
    task: str = "classify"

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"unknown task {self.task!r}; choose one of {TASKS}")
        if self.task == "detect" and self.gpu_decode:
            raise ValueError("--gpu-decode serves classification; detection decodes on the CPU loader")
        stream_spec.stream_names(self.streams)  # ValueError naming a bad setting
        if stream_spec.uses_fields(self.streams) and self.clip_len < 1:
            raise ValueError(f"the flow stream needs clip_len >= 1, got {self.clip_len}")
        _ = self.shape  # validates rgb_frames and frame_stride
        _ = self.clip_spec  # validates the sampler and its counts
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.workers < 0:
            raise ValueError(f"workers must be >= 0, got {self.workers}")
        if self.shuffle_buffer < 1:
            raise ValueError(f"shuffle_buffer must be >= 1, got {self.shuffle_buffer}")
        if self.verify not in VERIFY_MODES:
            raise ValueError(f"unknown verify mode {self.verify!r}; choose one of {VERIFY_MODES}")
        if self.on_corrupt not in ON_CORRUPT:
            raise ValueError(f"unknown on_corrupt {self.on_corrupt!r}; choose one of {ON_CORRUPT}")

    @property
    def uses_rgb(self) -> bool:
        return "rgb" in stream_spec.stream_names(self.streams)

    @property
    def uses_flow(self) -> bool:
        return "flow" in stream_spec.stream_names(self.streams)

    @property
    def uses_warped(self) -> bool:
        return "warped" in stream_spec.stream_names(self.streams)

    @property
    def shape(self) -> SnippetShape:
        """One snippet: L fields when a flow or warped stream is read (0 otherwise) and F frames."""
        return SnippetShape(
            clip_len=self.clip_len if stream_spec.uses_fields(self.streams) else 0,
            rgb_frames=self.rgb_frames,
            frame_stride=self.frame_stride,
        )

    @property
    def clip_spec(self) -> ClipSpec:
        return ClipSpec(
            sampler=self.sampler,
            segments=self.segments,
            snippets=self.snippets,
            strides=tuple(self.strides),
            test_clips=self.test_clips,
            ordered=self.ordered,
            test_every=self.test_every,
        )
