"""Planning a version: which videos go into which unit, and each unit's identity.

The shard plan is kept stable against a base version (the latest, as a rule): its units keep
their videos (minus removed ones), new videos go into new units. A unit's stem carries a
hash of everything its tar bytes depend on, so an unchanged unit keeps its tar and a changed
one gets a new tar beside the old. `BuildContext` is what a build settles before any work.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Mapping
from dataclasses import dataclass, replace

from pipeline import encode, storage
from pipeline.build import manifest, reuse
from pipeline.build import versions as version
from pipeline.build.config import BuildConfig, ShardConfig
from pipeline.build.units import Unit
from pipeline.records import VideoRef
from pipeline.storage import Location

BasePlan = list[tuple[str, str, list[str]]]  # (unit name, split, video keys in order)


def plan_units(refs: list[VideoRef], cfg: ShardConfig, base: BasePlan | None = None) -> list[Unit]:
    """Assign videos to shards, stable against a base plan (the latest version's).

    Base units keep their videos in their order, less the removed ones and those that moved
    to another split; the other videos are new: per split, a seeded shuffle of their sorted
    keys (mixing classes in a shard), cut every max_samples into units numbered after the
    base's. Without a base this is a fresh plan, independent of the order inputs were listed in.
    """
    by_key = {r.key: r for r in refs}
    units: list[Unit] = []
    placed: set[str] = set()
    for name, split, keys in sorted(base or []):
        kept = tuple(by_key[k] for k in keys if k in by_key and by_key[k].split == split and k not in placed)
        placed.update(r.key for r in kept)
        if kept:
            units.append(Unit(name=name, split=split, refs=kept))
    fresh = [r for r in refs if r.key not in placed]
    for split in sorted({r.split for r in fresh}):
        group = sorted((r for r in fresh if r.split == split), key=lambda r: r.key)
        random.Random(f"{cfg.seed}:{split}").shuffle(group)
        first = 1 + max((_unit_number(n) for n, s, _ in base or [] if s == split), default=-1)
        for n, lo in enumerate(range(0, len(group), cfg.max_samples)):
            units.append(
                Unit(name=f"{split}-{first + n:05d}", split=split, refs=tuple(group[lo : lo + cfg.max_samples]))
            )
    return sorted(units, key=lambda u: u.name)


def _unit_number(name: str) -> int:
    return int(name.rsplit("-", 1)[1])


RETRY_MODES = ("transient", "all")  # `--retry-errors [transient|all]`: which error rows are computed again


@dataclass(frozen=True)
class Retry:
    """`--retry-errors`: recompute the error rows `keys` of version `of`, sharing the rest."""

    of: str
    keys: frozenset[str]


def split_retried(units: list[Unit], retry: Retry) -> tuple[list[Unit], list[Unit]]:
    """(the units less the videos to retry, the new units that hold those videos).

    The videos retried leave their units for one new unit per split, numbered after the split's
    last: a unit that lost only error rows keeps its tars (an error row has no samples), so a
    retry writes the small new units and nothing else. Units left empty are dropped.
    """
    kept: list[Unit] = []
    moved: list[VideoRef] = []
    for u in units:
        rest = tuple(r for r in u.refs if r.key not in retry.keys)
        moved.extend(r for r in u.refs if r.key in retry.keys)
        if rest:
            kept.append(replace(u, refs=rest))
    fresh = []
    for split in sorted({r.split for r in moved}):
        last = max((_unit_number(u.name) for u in units if u.split == split), default=-1)
        refs = tuple(sorted((r for r in moved if r.split == split), key=lambda r: r.key))
        fresh.append(Unit(name=f"{split}-{last + 1:05d}", split=split, refs=refs))
    return kept, fresh


def identify(units: list[Unit], hashes: Mapping[str, str], cfg: BuildConfig, retry: Retry | None = None) -> list[Unit]:
    """Units with their media keys and stems (name + a hash of what their tars depend on).

    A unit holding videos to retry (`split_retried`) names the version it retries in its
    stem, so it is written anew; every other unit keeps its stem and its tars.
    """
    out = []
    for u in units:
        # A remote object's content sha256 is only known once a worker has read it: "" here.
        media = {
            r.key: (ident if version.is_sha256(ident) else "", version.media_key(ident, cfg.worker, cfg.tools))
            for r in u.refs
            for ident in [hashes.get(r.key, "")]
        }
        refs = [[r.key, r.source, r.label, r.label_id, r.split, media[r.key][1], *version.boxes_id(r)] for r in u.refs]
        what = {"unit": u.name, "schema": encode.SCHEMA_VERSION, "config": cfg.output_dict(), "refs": refs}
        if retry is not None and any(r.key in retry.keys for r in u.refs):
            what["retry_of"] = retry.of
        ident = hashlib.sha256(manifest.dump_json(what)).hexdigest()
        out.append(replace(u, media=media, stem=f"{u.name}-{ident[:10]}"))
    return out


def attach_stored(unit: Unit, index: Mapping[str, reuse.StoredVideo]) -> Unit:
    """The unit with every video whose media key is stored marked for copying."""
    stored = {r.key: index[unit.media[r.key][1]] for r in unit.refs if unit.media[r.key][1] in index}
    return replace(unit, stored=stored)


def base_plan(output: Location, vid: str | None, cfg: BuildConfig) -> BasePlan | None:
    """The shard plan of committed version `vid`, if its shard settings match `cfg`'s."""
    if not vid or not version.is_committed(output, vid):
        return None
    folder = storage.join(output, version.VERSIONS_DIR, vid)
    if manifest.read_info(folder).get("config", {}).get("shard") != cfg.output_dict()["shard"]:
        return None  # another shard layout: a fresh plan (stored samples are still copied)
    return [(r["name"], r["split"], list(r["keys"])) for r in manifest.read_rows(storage.join(folder, version.UNITS))]


@dataclass(frozen=True, kw_only=True)
class BuildContext:
    """What one build is, settled before any work: where it writes, what it reads, under which
    settings, and which version it makes."""

    out: Location
    input_path: str  # INPUT as given (recorded in dataset.json)
    refs: tuple[VideoRef, ...]
    label_map: Mapping[str, int]
    hashes: Mapping[str, str]  # video key -> content identity (`versions.content_hashes`)
    cfg: BuildConfig  # with its tools filled in
    vid: str  # the version built
    parent: str | None  # the latest version before this build
    retry: Retry | None = None  # --retry-errors: the error rows recomputed
