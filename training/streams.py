"""Stream names, shared by the loader (training.data) and the models (training.models).

A `streams` setting is one name, "both" (rgb and flow: the two-stream default) or a comma
list of "rgb", "flow" and "warped" (TSN's three modalities: warped flow is flow with the
camera motion removed, stored by `flowshard build --flow-warp`). Flow and warped streams
take 2L channels of L stacked fields each.
"""

from __future__ import annotations

STREAMS = ("rgb", "flow", "warped")
FIELD_STREAMS = ("flow", "warped")  # streams of stacked flow fields (2L channels)
ALIASES = {"both": ("rgb", "flow")}
# The settings a streams option offers by name; any comma list of STREAMS is accepted too.
STREAM_CHOICES = ("rgb", "flow", *ALIASES)
# Late-fusion weights by stream when none are given: TSN's 1 : 1.5 for rgb and flow; with
# warped flow the temporal weight is split, flow 1 and warped 0.5 (TSN's three modalities).
DEFAULT_WEIGHTS = {("rgb", "flow"): (1.0, 1.5), ("rgb", "flow", "warped"): (1.0, 1.0, 0.5)}


def stream_names(spec: str) -> tuple[str, ...]:
    """The streams a setting names, in STREAMS order (ValueError naming a bad setting)."""
    if spec in ALIASES:
        return ALIASES[spec]
    names = [s.strip() for s in str(spec).split(",")]
    bad = [s for s in names if s not in STREAMS]
    if bad or not names or len(set(names)) != len(names):
        raise ValueError(f"unknown streams {spec!r}: give 'both' or a comma list of distinct {STREAMS}")
    return tuple(s for s in STREAMS if s in names)


def uses_fields(spec: str) -> bool:
    """Whether any stream of `spec` reads flow fields (flow or warped)."""
    return any(s in FIELD_STREAMS for s in stream_names(spec))


def default_weights(spec: str) -> tuple[float, ...]:
    """Late-fusion weights of the streams of `spec`, in their order (1 each when TSN gives none)."""
    names = stream_names(spec)
    return DEFAULT_WEIGHTS.get(names, tuple(1.0 for _ in names))
