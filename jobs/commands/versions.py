"""`flowshard tag`, `flowshard prune`, `flowshard log` and the tree of `flowshard versions --tree`.

Names, retention and lineage of the versions of one OUTPUT; the library code is in
`pipeline.build.tags`, `pipeline.build.prune` and `pipeline.build.lineage`.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict

import click

from pipeline import storage
from pipeline.build import tags, versions
from pipeline.build.lineage import describe, lineage
from pipeline.build.prune import PruneOptions
from pipeline.build.prune import prune as run_prune

DURATION_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


def parse_duration(text: str) -> float:
    """Seconds from "90s", "30m", "12h", "2d" or a plain number of days ("1.5")."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d*)?)\s*([smhd]?)\s*", text or "")
    if not m:
        raise click.BadParameter(f"{text!r}: give a number of days, or a number followed by s, m, h or d")
    return float(m.group(1)) * DURATION_UNITS[m.group(2) or "d"]


# --- tag --------------------------------------------------------------------------------------


@click.command()
@click.argument("output", metavar="OUTPUT")
@click.argument("version", metavar="VERSION")
@click.argument("name", metavar="NAME", required=False)
@click.option("--delete", is_flag=True, help="Remove tag NAME (give OUTPUT NAME only).")
@click.option("--force", is_flag=True, help="Move NAME to VERSION when it names another version.")
def tag(output: str, version: str, name: str | None, delete: bool, force: bool) -> None:
    """Name VERSION (an id, a unique prefix, another name or "latest") NAME, so that OUTPUT@NAME
    reads it wherever a version id is taken. Names of hex digits only are refused (they read
    as id prefixes); an existing name moves only with --force."""
    root = storage.location(output)
    try:
        if delete:
            if name is not None:
                raise click.UsageError("--delete takes OUTPUT NAME only")
            click.echo(f"tag {version} removed (it named {tags.delete_tag(root, version)})")
            return
        if name is None:
            raise click.UsageError("give OUTPUT VERSION NAME (or --delete OUTPUT NAME)")
        tags.check_name(name)
        vid = versions.resolve_version(root, None if version == "latest" else version)
        old = tags.set_tag(root, name, vid, force=force)
    except (FileNotFoundError, ValueError) as exc:
        raise click.ClickException(str(exc)) from exc
    if old and old != vid:
        click.echo(f"tag {name} moved: {old} -> {vid}")
    else:
        click.echo(f"{name} -> {vid}")


# --- prune ------------------------------------------------------------------------------------


@click.command()
@click.argument("output", metavar="OUTPUT")
@click.option("--keep-last", type=int, default=None, metavar="N", help="Remove all but the newest N versions.")
@click.option("--older-than", type=float, default=None, metavar="DAYS", help="Remove versions older than DAYS.")
@click.option(
    "--version", "specs", multiple=True, metavar="V", help="Remove version V (id, prefix or name); repeatable."
)
@click.option("--keep-tagged", is_flag=True, help="Keep tagged versions the rules select (else they are refused).")
@click.option("--force", is_flag=True, help="Remove the latest version or tagged ones too.")
@click.option(
    "--min-age",
    default="1d",
    show_default=True,
    metavar="AGE",
    help="Never remove versions younger than this (a reader may have opened them): 12h, 2d, 0.",
)
@click.option(
    "--wait",
    "wait_s",
    type=float,
    default=0.0,
    show_default=True,
    metavar="SECONDS",
    help="Wait this long for a running build of OUTPUT to finish.",
)
@click.option("--dry-run", is_flag=True, help="Print what would be removed; delete nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print the plan and result as JSON.")
def prune(
    output: str,
    keep_last: int | None,
    older_than: float | None,
    specs: tuple[str, ...],
    keep_tagged: bool,
    force: bool,
    min_age: str,
    wait_s: float,
    dry_run: bool,
    as_json: bool,
) -> None:
    """Remove versions from OUTPUT's catalog and delete the shards, manifests and unit records no
    remaining version references; print what goes and the bytes given back. The latest version
    and tagged ones are refused without --force; an unfinished build's files are kept."""
    try:
        opts = PruneOptions(
            versions=specs,
            keep_last=keep_last,
            older_than_days=older_than,
            keep_tagged=keep_tagged,
            force=force,
            min_age_s=parse_duration(min_age),
            dry_run=dry_run,
            lock_wait_s=wait_s,
        )
        result = run_prune(output, opts)
    except (FileNotFoundError, ValueError, RuntimeError) as exc:
        raise click.ClickException(str(exc)) from exc
    plan = result.plan
    if as_json:
        click.echo(json.dumps({**asdict(result), "bytes": plan.bytes, "shard_bytes": plan.shard_bytes}, indent=2))
        return
    if result.resumed:
        click.echo("an interrupted prune was " + ("found: the next prune finishes it" if dry_run else "finished first"))
    verb = "would remove" if dry_run else "removed"
    for vid in plan.versions:
        names = f"  [{', '.join(plan.names[vid])}]" if plan.names.get(vid) else ""
        click.echo(f"- {vid}{names}")
    for vid, why in plan.kept:
        click.echo(f"  kept {vid}: {why}")
    if not plan.versions and not plan.strays:
        click.echo("nothing to prune")
        return
    click.echo(
        f"{verb} {len(plan.versions)} version(s): {len(plan.shards)} shard(s) of {_mb(plan.shard_bytes)} "
        f"no remaining version references, {len(plan.units)} unit record(s), "
        f"{len(plan.strays)} stray tar(s), manifests"
    )
    given = plan.bytes if dry_run else result.freed
    click.echo(
        f"{'would give' if dry_run else 'gave'} back {given} bytes ({_mb(given)}); "
        f"the latest version is {plan.latest or 'none'}"
    )
    if result.note:
        click.echo(f"note: {result.note}")


# --- lineage ----------------------------------------------------------------------------------


def _line(entry: dict) -> str:
    names = f"  [{', '.join(entry['names'])}]" if entry["names"] else ""
    shared = f", shares {_mb(entry['shared_bytes'])} with its parent" if entry["parent_state"] == "committed" else ""
    return (
        f"{entry['version']}{names}  {entry['created']}  {entry['videos']} videos  {_mb(entry['bytes'])}{shared}: "
        f"{describe(entry)}"
    )


def tree_lines(entries: list[dict]) -> list[str]:
    """The lineage entries as a tree: each version under its parent, the latest marked *."""
    by_version = {e["version"]: e for e in entries}
    children: dict[str, list[dict]] = {}
    roots = []
    for e in entries:
        if e["parent"] in by_version:
            children.setdefault(e["parent"], []).append(e)
        else:
            roots.append(e)
    lines: list[str] = []

    def walk(e: dict, prefix: str, last: bool, root: bool) -> None:
        branch = "" if root else "`- " if last else "|- "
        lines.append(f"{'*' if e['latest'] else ' '} {prefix}{branch}{_line(e)}")
        below = prefix if root else prefix + ("   " if last else "|  ")
        kids = children.get(e["version"], [])
        for i, kid in enumerate(kids):
            walk(kid, below, i == len(kids) - 1, False)

    for r in roots:
        walk(r, "", True, True)
    return lines


def print_tree(output: str) -> None:
    """Print OUTPUT's versions as a tree (what `flowshard versions OUTPUT --tree` shows)."""
    try:
        entries = lineage(output)
    except (FileNotFoundError, ValueError) as exc:
        raise click.ClickException(str(exc)) from exc
    if not entries:
        raise click.ClickException(f"{output}: no versions")
    for line in tree_lines(entries):
        click.echo(line)


@click.command()
@click.argument("output", metavar="OUTPUT")
@click.argument("version", metavar="VERSION", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print the entries as JSON.")
def log(output: str, version: str | None, as_json: bool) -> None:
    """The lineage of VERSION (default: the latest), newest first: each version, its parent, what
    changed (videos added, removed, relabelled; settings and tools), its size and the bytes it
    shares with its parent."""
    root = storage.location(output)
    try:
        vid = versions.resolve_version(root, version)
        by_version = {e["version"]: e for e in lineage(root)}
    except (FileNotFoundError, ValueError) as exc:
        raise click.ClickException(str(exc)) from exc
    chain: list[dict] = []
    while vid in by_version and vid not in {e["version"] for e in chain}:
        chain.append(by_version[vid])
        vid = by_version[vid]["parent"]
    if as_json:
        click.echo(json.dumps(chain, indent=2))
        return
    for e in chain:
        click.echo(f"{'*' if e['latest'] else ' '} {_line(e)}")
