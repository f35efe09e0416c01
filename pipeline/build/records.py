"""A finished unit's record: the shards it wrote and a row per video, typed, with a JSON round trip.

Each finished unit leaves OUTPUT/.flowshard/units/<stem>.json (`pipeline.build.resume`); a
rerun reads it back instead of writing the unit again, and the version's manifests are made
of its rows. The same records cross the Ray boundary (a writer actor returns one).

`to_json` gives the dict written to disk (and, row by row, to the Parquet manifests), with
the same keys and values the build has always written, so neither file changes by a byte.
Fields added after release 0.1 that are left out of the JSON while they hold their default
(`OPTIONAL`) keep a record of an older release writing back the same bytes.
`from_json` refuses a key it does not know and a value of the wrong type (ValueError naming
it); a key an older release did not write takes the default documented on its field.
"""

from dataclasses import MISSING, dataclass, fields
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

if TYPE_CHECKING:
    from _typeshed import DataclassInstance  # what dataclasses.fields() accepts

T = TypeVar("T", bound="DataclassInstance")


@dataclass(frozen=True, kw_only=True)
class ShardRow:
    """One tar a unit wrote: a row of shards.parquet."""

    name: str  # file name in OUTPUT/shards/
    split: str
    samples: int
    bytes: int
    sha256: str
    # Written by later releases than the first (only in unit records; "" in an older one):
    tag: str = ""  # the store's identity of the tar when its record was written: ETag remotely, mtime_ns locally

    OPTIONAL: ClassVar[tuple[str, ...]] = ("tag",)  # written when not ""

    def to_json(self) -> dict:
        """The row as written to the unit record and shards.parquet."""
        return _to_json(self)

    @classmethod
    def from_json(cls, data: dict) -> "ShardRow":
        """The row from its JSON form (ValueError naming an unknown key or a mistyped value)."""
        return _from_json(cls, data, "shard row")


@dataclass(frozen=True, kw_only=True)
class VideoRow:
    """One input video's outcome in a unit: a row of manifest.parquet."""

    id: str  # the sample key
    path: str  # the source path, relative to INPUT
    label: str
    label_id: int
    split: str
    status: str  # "ok" | "error"
    frames: int
    flow_fields: int
    parts: int  # samples the video was cut into
    shard: str  # the tar(s) holding its samples, comma-separated ("" for an error row)
    bytes: int
    sha256: str  # of its samples' digests ("" for an error row)
    # Written by later releases than the first; an older record without them reads as:
    error: str = ""  # the failure's reason ("" when ok)
    error_kind: str = ""  # "transient" | "permanent" for an error row, "" when ok or not recorded
    content_sha256: str = ""  # of the input's bytes; "" when not known
    media_key: str = ""  # identity of its frame and flow members; "": never copied into a later version
    boxes: str = ""  # its annotated boxes (`pipeline.boxes.manifest_value`); "": none
    declared_frames: int = 0  # frames its container declares (duration x rate) at the stored rate; 0: unknown
    decoded_frames: int = 0  # frames decoded (`frames` is those stored: fewer in clips mode); 0: unknown

    OPTIONAL: ClassVar[tuple[str, ...]] = ("declared_frames", "decoded_frames")  # written when not 0

    def to_json(self) -> dict:
        """The row as written to the unit record and manifest.parquet."""
        return _to_json(self)

    @classmethod
    def from_json(cls, data: dict) -> "VideoRow":
        """The row from its JSON form (ValueError naming an unknown key or a mistyped value)."""
        return _from_json(cls, data, "video row")


@dataclass(frozen=True, kw_only=True)
class UnitRecord:
    """What a finished unit wrote: its tars and its videos, in plan order."""

    unit: str  # the unit's name in the plan
    stem: str  # its tar name stem (name plus a hash of what its bytes depend on)
    split: str
    shards: tuple[ShardRow, ...]
    videos: tuple[VideoRow, ...]
    # Written by later releases than the first; an older record without them reads as 0:
    computed: int = 0  # videos decoded with flow computed for this unit
    reused: int = 0  # videos copied from stored samples

    def to_json(self) -> dict:
        """The record as written to OUTPUT/.flowshard/units/<stem>.json."""
        return {
            **_to_json(self),
            "shards": [s.to_json() for s in self.shards],
            "videos": [v.to_json() for v in self.videos],
        }

    @classmethod
    def from_json(cls, data: dict) -> "UnitRecord":
        """The record from its JSON form (ValueError naming an unknown key or a mistyped value)."""
        if not isinstance(data, dict):
            raise ValueError(f"a unit record must be a JSON object, got {type(data).__name__}")
        rows: dict[str, type[ShardRow] | type[VideoRow]] = {"shards": ShardRow, "videos": VideoRow}
        nested = {}
        for key, row in rows.items():
            items = data.get(key)
            if not isinstance(items, list):
                raise ValueError(f"unit record key {key!r} must be a list, got {items!r}")
            nested[key] = tuple(row.from_json(item) for item in items)
        return _from_json(cls, {**data, **nested}, "unit record", skip=tuple(rows))


def _to_json(row: Any) -> dict:
    skip = getattr(row, "OPTIONAL", ())
    return {
        f.name: getattr(row, f.name) for f in fields(row) if f.name not in skip or getattr(row, f.name) != f.default
    }


def _from_json(cls: type[T], data: dict, what: str, skip: tuple[str, ...] = ()) -> T:
    """`cls` from a dict: unknown keys, missing required keys and mistyped values are ValueErrors."""
    if not isinstance(data, dict):
        raise ValueError(f"a {what} must be a JSON object, got {type(data).__name__}")
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise ValueError(f"{what} has unknown key {unknown[0]!r} (known: {', '.join(sorted(known))})")
    for name, f in known.items():
        if name not in data:
            if f.default is MISSING and f.default_factory is MISSING:
                raise ValueError(f"{what} lacks the key {name!r}")
        elif name not in skip and not _is_type(data[name], f.type):
            raise ValueError(f"{what} key {name!r} must be {f.type}, got {data[name]!r}")
    return cls(**data)


def _is_type(value: Any, kind: Any) -> bool:
    if kind in (int, "int"):
        return isinstance(value, int) and not isinstance(value, bool)
    if kind in (str, "str"):
        return isinstance(value, str)
    return True
