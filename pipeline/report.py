"""`flowshard report`: the videos a version could not store, grouped by reason, and the stored
videos that look wrong (a `warning`, e.g. fewer frames decoded than the container declares).

Error rows carry the worker's full message ("<path>: <what went wrong>"); the report sorts
them into a few stable kinds (first matching pattern wins) so a big build's failures read
as a short table, with every video still listed under its kind.
"""

from __future__ import annotations

import re
from pathlib import Path

from pipeline.dataset import open_dataset

# (kind, pattern) in priority order; the patterns match the worker's and decoder's messages.
_KINDS: tuple[tuple[str, re.Pattern], ...] = tuple(
    (kind, re.compile(pattern, re.IGNORECASE))
    for kind, pattern in (
        ("empty file", r"empty file"),
        ("file not found", r"file not found"),
        ("not a regular file", r"not a regular file"),
        ("resolution too large", r"declared resolution|stored frame size|max_pixels|Picture size \d+x\d+ is invalid"),
        ("unsupported codec", r"unsupported codec|no decoder found|decoder \(codec \S+\) not found"),
        ("not a media file", r"not a media file|invalid data found"),
        ("container not allowed", r"container not allowed"),
        ("no video stream", r"no video stream"),
        ("too short", r"too short"),
        ("cut short", r"declared frames, below --min-coverage"),
        ("unsupported input URI", r"URI scheme"),
        ("decoding failed", r"ffmpeg|no frames decoded|unparsable|could not open|decod"),
        ("task lost", r"worker|crash|died|RayError|ObjectLost"),
    )
)


def classify(error: str) -> str:
    """The kind of a per-video error message, e.g. "not a media file"; "other" if none fits."""
    for kind, pattern in _KINDS:
        if pattern.search(error or ""):
            return kind
    return "other"


def detail(error: str, path: str) -> str:
    """The error message without the video's path in front (the path is listed beside it)."""
    text = error or ""
    for prefix in (path, Path(path).name):
        head, sep, tail = text.partition(f"{prefix}: ")
        if sep and (not head or head.endswith("/")):
            return tail
    return text


def failure_groups(dataset: str | Path) -> dict:
    """The failures of a version ("OUTPUT" or "OUTPUT@VERSION") grouped by reason, largest first.

    Each video says whether its failure was transient (worth `flowshard build --retry-errors`)
    or permanent (a broken file), as its manifest row recorded; each group lists the kinds
    among its videos.
    """
    ds = open_dataset(dataset)
    groups: dict[str, list[dict]] = {}
    for v in ds.errors():
        groups.setdefault(classify(v.error), []).append(
            {
                "id": v.video_id,
                "path": v.path,
                "split": v.split,
                "kind": v.error_kind or "unknown",
                "error": detail(v.error, v.path),
            }
        )
    ordered = sorted(groups.items(), key=lambda kv: (-len(kv[1]), kv[0]))
    errors = ds.errors()
    warnings = [
        {"id": v.video_id, "path": v.path, "split": v.split, "warning": v.warning} for v in ds.videos() if v.warning
    ]
    return {
        "version": ds.version,
        "videos": len(ds.videos(include_errors=True)),
        "errors": len(errors),
        "transient": sum(v.error_kind == "transient" for v in errors),
        "warnings": sorted(warnings, key=lambda r: r["id"]),
        "failures": [
            {
                "reason": reason,
                "count": len(rows),
                "kind": "+".join(sorted({r["kind"] for r in rows})),
                "videos": sorted(rows, key=lambda r: r["id"]),
            }
            for reason, rows in ordered
        ],
    }


def format_table(report: dict, *, every: bool = False) -> list[str]:
    """Lines of the report table: one per kind with an example, or every video with `every`."""
    lines = [
        f"version {report['version']}: {report['errors']} of {report['videos']} videos failed"
        + (
            f", {report['transient']} of them transient (flowshard build --retry-errors computes them again)"
            if report.get("transient")
            else ""
        )
    ]
    return lines + _failure_lines(report, every) + _warning_lines(report)


def _warning_lines(report: dict) -> list[str]:
    """Stored videos with a warning, one line each (every one: they are not grouped)."""
    rows = report.get("warnings") or []
    if not rows:
        return []
    width = max(30, *(len(r["path"]) for r in rows))
    return [
        f"{len(rows)} stored video(s) with a warning:",
        f"{'VIDEO':<{width}}  WARNING",
        *(f"{r['path']:<{width}}  {r['warning']}" for r in rows),
    ]


def _failure_lines(report: dict, every: bool) -> list[str]:
    lines: list[str] = []
    if not report["failures"]:
        return lines
    width = max(len("REASON"), *(len(g["reason"]) for g in report["failures"]))
    kinds = max(
        len("KIND"),
        *(len(g["kind"]) for g in report["failures"]),
        *(len(r["kind"]) for g in report["failures"] for r in g["videos"]),
    )
    lines.append(f"{'REASON':<{width}}  {'COUNT':>5}  {'KIND':<{kinds}}  {'VIDEO':<30}  DETAIL")
    for g in report["failures"]:
        rows = g["videos"] if every else g["videos"][:1]
        for n, row in enumerate(rows):
            reason, count = (g["reason"], str(g["count"])) if n == 0 else ("", "")
            kind = row["kind"] if every else g["kind"]
            lines.append(f"{reason:<{width}}  {count:>5}  {kind:<{kinds}}  {row['path']:<30}  {row['error']}")
    return lines
