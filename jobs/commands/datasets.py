"""`flowshard verify|inspect|versions|diff|report|export|clips`: read, compare, export and
derive built datasets."""

from __future__ import annotations

import json

import click

from jobs.commands.versions import print_tree
from jobs.parsing import parse_numbers, parse_size
from pipeline import open_dataset
from pipeline.build.versions import diff_versions, list_versions
from pipeline.clips import SAMPLINGS, ClipsConfig, derive_clips
from pipeline.export import FORMATS, export_rawframes
from pipeline.report import failure_groups, format_table
from pipeline.verify import verify as run_verify
from pipeline.visualize import contact_sheet, write_png


@click.command()
@click.argument("dataset", metavar="OUTPUT[@VERSION]")
@click.option("--quick", is_flag=True, help="Check hashes and metadata only, without decoding images.")
def verify(dataset: str, quick: bool) -> None:
    """Check a version's shards (hash, size, count) and samples (schema, decodability); default: the latest."""
    report = run_verify(dataset, decode=not quick)
    for w in report.warnings:
        click.echo(f"warning: {w}", err=True)
    for p in report.problems:
        click.echo(f"problem: {p}", err=True)
    if not report.ok:
        raise click.ClickException(f"{dataset}: {len(report.problems)} problem(s) found")
    click.echo(f"{dataset}: ok ({report.shards} shards, {report.samples} samples)")


@click.command()
@click.argument("dataset", metavar="OUTPUT[@VERSION]")
@click.option("--video", default=None, help="Video id (default: the first stored video).")
@click.option("-o", "--output", "out", default=None, help="PNG to write (default: <video>.png).")
@click.option("--columns", type=int, default=6, show_default=True)
def inspect(dataset: str, video: str | None, out: str | None, columns: int) -> None:
    """Print a dataset's summary and write a contact sheet PNG of one video."""
    try:
        ds = open_dataset(dataset)
    except (FileNotFoundError, ValueError) as exc:
        raise click.ClickException(str(exc)) from exc
    counts = ds.info["counts"]
    click.echo(
        f"{dataset}: version {ds.version}, {counts['ok']} videos ({counts['splits']}), "
        f"{ds.num_classes} classes, {counts['shards']} shards, {counts['bytes'] / 1e6:.1f} MB, "
        f"{counts['errors']} error(s)"
    )
    videos = ds.videos()
    if not videos:
        raise click.ClickException(f"{dataset}: no stored videos to show")
    video = video or videos[0].video_id
    try:
        sample = ds.read(video)
    except KeyError as exc:
        raise click.ClickException(str(exc.args[0])) from exc
    out = out or f"{video}.png"
    try:
        write_png(out, contact_sheet(sample, columns=columns))
    except OSError as exc:
        raise click.ClickException(str(exc)) from exc
    m = sample.meta
    click.echo(
        f"{video}: label {m['label']} ({m['label_id']}), {len(sample.frames)} frames, {len(sample.flow)} "
        f"flow fields of {m['size'][0]}x{m['size'][1]} ({m['flow']['algorithm']}), sheet -> {out}"
    )


@click.command()
@click.argument("output", metavar="OUTPUT")
@click.option("--json", "as_json", is_flag=True, help="Print the catalog as JSON.")
@click.option(
    "--tree", is_flag=True, help="Each version under its parent: what changed, its size, bytes shared with its parent."
)
def versions(output: str, as_json: bool, tree: bool) -> None:
    """List the versions built in OUTPUT (the latest marked *), with counts, sizes, dates and names."""
    if tree:
        print_tree(output)
        return
    rows = list_versions(output)
    if not rows:
        raise click.ClickException(f"{output}: no versions (no {output}/versions.parquet)")
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    click.echo(
        f"  {'VERSION':<16}  {'CREATED (UTC)':<19}  {'VIDEOS':>7}  {'ERRORS':>6}  {'SHARDS':>6}  "
        f"{'SIZE':>10}  {'NEW':>10}  {'PARENT':<16}  NAMES"
    )
    for r in rows:
        click.echo(
            f"{'*' if r['latest'] else ' '} {r['version']:<16}  {r['created']:<19}  {r['videos']:>7}  "
            f"{r['errors']:>6}  {r['shards']:>6}  {_mb(r['bytes']):>10}  {_mb(r['new_bytes']):>10}  "
            f"{r['parent'] or '-':<16}  {','.join(r['names']) or '-'}"
        )


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


@click.command()
@click.argument("output", metavar="OUTPUT")
@click.argument("old", metavar="A")
@click.argument("new", metavar="B", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print the differences as JSON.")
def diff(output: str, old: str, new: str | None, as_json: bool) -> None:
    """Videos added, removed and changed, and label changes, from version A to B (default: the latest)."""
    try:
        d = diff_versions(output, old, new)
    except (FileNotFoundError, ValueError) as exc:
        raise click.ClickException(str(exc)) from exc
    if as_json:
        click.echo(json.dumps(d, indent=2, ensure_ascii=False))
        return
    click.echo(
        f"{d['from']} -> {d['to']}: {len(d['added'])} added, {len(d['removed'])} removed, "
        f"{len(d['moved'])} moved, {len(d['changed'])} changed, {len(d['relabelled'])} relabelled"
    )
    for r in d["added"]:
        click.echo(f"+ {r['id']}  ({r['label']})  {r['path']}")
    for r in d["removed"]:
        click.echo(f"- {r['id']}  ({r['label']})  {r['path']}")
    for r in d["moved"]:
        click.echo(f"> {r['from']} -> {r['to']}  {r['from_path']} -> {r['path']}")
    for r in d["changed"]:
        click.echo(f"~ {r['id']}  content changed  {r['path']}")
    for what in ("added", "removed"):
        if d["classes"][what]:
            click.echo(f"classes {what}: {', '.join(d['classes'][what])}")
    for r in d["classes"]["renumbered"]:
        click.echo(f"label id of {r['label']}: {r['from']} -> {r['to']}")
    for what in ("relabelled", "split_changed", "status_changed"):
        for r in d[what]:
            click.echo(f"{what.replace('_', ' ')}: {r['id']}  {r['from']} -> {r['to']}")
    for r in d["settings"]:
        click.echo(f"setting {r['setting']}: {r['from']!r} -> {r['to']!r}")


@click.command()
@click.argument("dataset", metavar="OUTPUT[@VERSION]")
@click.option("--json", "as_json", is_flag=True, help="Print the failures as JSON.")
@click.option("--all", "every", is_flag=True, help="List every failed video, not one example per reason.")
def report(dataset: str, as_json: bool, every: bool) -> None:
    """List the videos a version could not store, grouped by reason."""
    try:
        groups = failure_groups(dataset)
    except (FileNotFoundError, ValueError) as exc:
        raise click.ClickException(str(exc)) from exc
    if as_json:
        click.echo(json.dumps(groups, indent=2, ensure_ascii=False))
        return
    for line in format_table(groups, every=every):
        click.echo(line)


@click.command()
@click.argument("dataset", metavar="DATASET[@VERSION]")
@click.argument("output", metavar="OUT")
@click.option(
    "--format",
    "fmt",
    default="rawframes",
    show_default=True,
    type=click.Choice(FORMATS),
    help="rawframes: mmaction2's layout (img_%05d.jpg, flow_x_/flow_y_%05d.jpg, annotation lists).",
)
@click.option(
    "--flow-quality",
    type=int,
    default=None,
    help="JPEG quality of the separate x and y images (default: the dataset's flow quality).",
)
def export(dataset: str, output: str, fmt: str, flow_quality: int | None) -> None:  # noqa: ARG001 (one format so far)
    """Export a dataset for other tools: mmaction2 rawframes (RGB JPEG bytes copied, flow x/y split).

    docs/FORMAT.md ("mmaction2 rawframes export") says which list a config takes and what
    the pixel values mean.
    """
    try:
        s = export_rawframes(dataset, output, flow_quality=flow_quality)
    except (FileNotFoundError, FileExistsError, ValueError, OSError, RuntimeError) as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(
        f"{output}: {s.videos} video folders, {s.frames} frames, {s.flow_fields} flow fields"
        f"{' (and warped flow)' if s.warped else ''}; lists {', '.join(s.lists)}"
    )


@click.command("clips")
@click.argument("dataset")
@click.argument("output", metavar="OUT")
@click.option(
    "--clip-len",
    type=int,
    default=10,
    show_default=True,
    help="Flow fields per snippet (L; 0: RGB only). A video with fewer fields repeats its last one "
    "(TSN's padding; the count is logged); a clip longer than every video is refused.",
)
@click.option("--rgb-frames", type=int, default=1, show_default=True, help="RGB frames per snippet (F).")
@click.option("--frame-stride", type=int, default=1, show_default=True, help="Stored frames between them.")
@click.option("--snippets", type=int, default=1, show_default=True, help="Snippets per clip (T).")
@click.option(
    "--strides",
    default="1",
    show_default=True,
    help="Frames between the snippets of a clip; several (1,5,10) cut one clip set per stride.",
)
@click.option("--per-video", type=int, default=5, show_default=True, help="Clips per video sample (and stride).")
@click.option("--sampling", default="uniform", show_default=True, type=click.Choice(SAMPLINGS))
@click.option("--seed", type=int, default=0, show_default=True, help="Seeds random clips and the clip shuffle.")
@click.option("--shard-samples", type=int, default=1000, show_default=True, help="Maximum clips per tar.")
@click.option("--shard-size", default="256MiB", show_default=True, help="Maximum tar size (e.g. 256MiB, 1GB).")
@click.option("--verify/--no-verify", default=True, show_default=True, help="Check parent shard hashes first.")
@click.option("--overwrite", is_flag=True, help="Replace clip shards already in OUT.")
def clips(dataset: str, output: str, strides: str, shard_size: str, overwrite: bool, **o) -> None:
    """Cut clip shards (snippets of frames + stacked flow fields, bytes copied) from a built DATASET into OUT."""
    try:
        cfg = ClipsConfig(strides=parse_numbers(strides, int), shard_bytes=parse_size(shard_size), **o)
        info = derive_clips(dataset, output, cfg, overwrite=overwrite)
    except (FileNotFoundError, FileExistsError, ValueError, OSError) as exc:
        raise click.ClickException(str(exc)) from exc
    c = info["counts"]
    click.echo(
        f"{output}: {sum(c['clips'].values())} clips of {sum(c['videos'].values())} videos "
        f"({c['clips']}), {sum(c['shards'].values())} shard(s), {c['bytes'] / 1e6:.1f} MB; "
        f"version {info['version']}"
    )
