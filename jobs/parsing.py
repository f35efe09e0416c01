"""Parsing of command-line values shared by the command modules (jobs.commands.*,
jobs.model_options, jobs.build_dataset)."""

from __future__ import annotations

import json
import re

import click

_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?i?b?)?\s*$", re.I)
_UNITS = {
    "": 1,
    "b": 1,
    "k": 1e3,
    "kb": 1e3,
    "kib": 1 << 10,
    "m": 1e6,
    "mb": 1e6,
    "mib": 1 << 20,
    "g": 1e9,
    "gb": 1e9,
    "gib": 1 << 30,
    "t": 1e12,
    "tb": 1e12,
    "tib": 1 << 40,
}


def parse_size(text: str) -> int:
    """'1GB', '500MiB', '65536' -> bytes."""
    m = _SIZE_RE.match(str(text))
    if not m or (m.group(2) or "").lower() not in _UNITS:
        raise click.BadParameter(f"{text!r} is not a size (e.g. 1GB, 500MiB, 65536)")
    return int(float(m.group(1)) * _UNITS[(m.group(2) or "").lower()])


def parse_numbers(text: str, kind: type = float) -> tuple:
    """'1,5,10' -> (1, 5, 10) of `kind` (click.BadParameter naming the text otherwise)."""
    try:
        return tuple(kind(x) for x in str(text).split(","))
    except ValueError as exc:
        raise click.BadParameter(f"{text!r}: expected comma-separated {kind.__name__} values") from exc


def parse_params(items: tuple[str, ...]) -> dict:
    """('tau=0.25', 'warps=3') -> {'tau': 0.25, 'warps': 3} (numbers, booleans and words)."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{item!r}: expected KEY=VALUE")
        try:
            out[key.strip()] = json.loads(value.lower() if value.lower() in ("true", "false") else value)
        except ValueError:
            out[key.strip()] = value
    return out
