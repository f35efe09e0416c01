"""The `flowshard` command: the only place that reads argv, the environment and YAML."""
from __future__ import annotations

import json
import logging
import os
import re
import sys
from pathlib import Path

import click

from jobs.parsing import parse_params, parse_size
from pipeline.flow.estimators import ALGORITHMS, BACKENDS, algorithms_for, auto_backend

log = logging.getLogger("flowshard")


def setup_logging(level: str) -> None:
    logging.basicConfig(level=getattr(logging, level.upper()), format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)


def configure_storage(text: str | None) -> None:
    """Object-storage settings for this process and the processes it starts (local Ray workers,
    loader workers): AWS_REGION also as botocore's AWS_DEFAULT_REGION, and --storage-options
    (JSON) applied here and exported as fsspec's FSSPEC_<PROTOCOL> variables."""
    from pipeline import storage

    if os.environ.get("AWS_REGION") and not os.environ.get("AWS_DEFAULT_REGION"):
        os.environ["AWS_DEFAULT_REGION"] = os.environ["AWS_REGION"]
    if not text:
        return
    try:
        options = storage.parse_options(text)
        storage.configure(options)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--storage-options") from exc
    os.environ.update(storage.fsspec_env(options))


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--log-level", default="INFO", show_default=True,
              type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False))
@click.option("--storage-options", default=None, metavar="JSON", envvar="FLOWSHARD_STORAGE_OPTIONS",
              help="Options of the filesystems behind s3:// (any fsspec) URLs, per protocol or for all: "
                   '\'{"s3": {"endpoint_url": "http://127.0.0.1:9000"}}\'. Default: the AWS environment '
                   "(AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, ...) and fsspec's config. Env: FLOWSHARD_STORAGE_OPTIONS.")
def cli(log_level: str, storage_options: str | None) -> None:
    """flowshard: labelled videos -> optical flow -> WebDataset shards -> two-stream training.

    INPUT, OUTPUT and DATASET may be local folders or object-storage URLs (s3://bucket/prefix).
    """
    setup_logging(log_level)
    configure_storage(storage_options)


def build_options(f):
    """Options shared by `build` and the job entrypoints."""
    opts = [
        click.option("--split", type=int, default=None, help="Official split N of a UCF101/HMDB51 root."),
        click.option("--resize", default="short:256", show_default=True, help="short:N, WxH (e.g. 340x256) or none."),
        click.option("--fps", type=float, default=None, help="Resample to this frame rate (default: keep every frame)."),
        click.option("--decode-threads", type=int, default=1, show_default=True,
                     help="ffmpeg threads per decoder (0: ffmpeg's choice); parallelism comes from decoding several videos."),
        click.option("--flow", "flow_algo", default="tvl1", show_default=True,
                     type=click.Choice(ALGORITHMS),
                     help="raft_* run torchvision RAFT, sea_raft_* SEA-RAFT, both on RGB frames, from "
                          "--flow-param weights=FILE (never downloaded)."),
        click.option("--flow-backend", default="auto", show_default=True, type=click.Choice(["auto", *BACKENDS]),
                     help="auto: torch on GPUs (and for RAFT), else opencv."),
        click.option("--flow-device", default="auto", show_default=True,
                     help="cpu, cuda[:N], or auto: cuda when TV-L1 runs on a Ray cluster that has GPUs."),
        click.option("--flow-param", multiple=True, metavar="KEY=VALUE",
                     help="Estimator parameter, repeatable (see docs/FORMAT.md for each algorithm's names); "
                          "torch backend also: compile=1, dtype=fp32|fp16|bf16, sync_every=N (0: fixed iterations)."),
        click.option("--flow-warp", is_flag=True, default=False,
                     help="Also store warped flow (camera motion removed by a homography, TSN's third modality)."),
        click.option("--warp-features", default="orb", show_default=True, type=click.Choice(["orb", "sift"]),
                     help="Descriptors matched to estimate the camera motion (--flow-warp)."),
        click.option("--step", type=int, default=1, show_default=True, help="Flow between frames t and t+step."),
        click.option("--bound", type=float, default=20.0, show_default=True, help="Quantization bound in pixels."),
        click.option("--clips", type=int, default=0, show_default=True, help="Keep N uniformly spaced clips (0: dense)."),
        click.option("--clip-len", type=int, default=10, show_default=True, help="Flow fields per clip."),
        click.option("--max-frames", type=int, default=1500, show_default=True, help="Frames per sample; longer videos become parts."),
        click.option("--chunk-frames", type=int, default=64, show_default=True, help="Frames per unit of flow work."),
        click.option("--batch-size", type=int, default=None,
                     help="Frame pairs per estimator call (default: by estimator and frame size, e.g. 16 on CPU, "
                          "about 128 TV-L1 pairs at 340x256 on a GPU)."),
        click.option("--rgb-quality", type=int, default=90, show_default=True),
        click.option("--flow-quality", type=int, default=95, show_default=True),
        click.option("--max-pixels", type=int, default=7680 * 4320, show_default=True,  # pipeline.stages.config.DEFAULT_MAX_PIXELS
                     help="Refuse (as an error row) a video whose frames are larger, before decoding it."),
        click.option("--shard-size", default="1GB", show_default=True, help="Maximum tar size (e.g. 1GB, 256MB)."),
        click.option("--shard-samples", type=int, default=1000, show_default=True, help="Maximum samples per tar."),
        click.option("--seed", type=int, default=0, show_default=True, help="Seed of the video-to-shard shuffle."),
        click.option("--boxes", "boxes_path", default=None, metavar="FILE",
                     help="Per-frame action boxes to store with the samples: a CSV video,frame,x1,y1,x2,y2,"
                          "label[,track], a UCF101-24 .pkl, or a folder of J-HMDB puppet_mask.mat files."),
        click.option("--box-tolerance", type=float, default=1.0, show_default=True,
                     help="Pixels a box may stick out of the frame (clipped) before its video is an error row."),
        click.option("--executor", default="ray", show_default=True, type=click.Choice(["ray", "local"])),
        click.option("--address", default=None, envvar="RAY_ADDRESS",
                     help="Ray cluster address; 'auto' reuses the Ray that `ray start --head` runs on this machine "
                          "(no start-up per build). Default: $RAY_ADDRESS, else a private local Ray on loopback, "
                          "started once the inputs are checked."),
        click.option("--num-cpus", type=int, default=None, help="CPUs of the local Ray (default: all)."),
        click.option("--flow-actors", type=int, default=None, help="Flow actors (default: one per GPU with cuda)."),
        click.option("--actor-gpus", type=float, default=1.0, show_default=True, help="GPUs per flow actor."),
        click.option("--actors-per-gpu", type=int, default=None,
                     help="Flow actors sharing each GPU (sets --actor-gpus to 1/N); their batches interleave."),
        click.option("--actor-resource", default=None, help="Custom Ray resource that places flow actors."),
        click.option("--writer-resource", default=None,
                     help="Custom Ray resource that places shard writers (e.g. on-demand nodes; one unit each)."),
        click.option("--min-nodes", type=int, default=0, show_default=True,
                     help="Wait (asking the autoscaler) until the Ray cluster has this many nodes before starting."),
        click.option("--min-cpus", type=int, default=0, show_default=True,
                     help="Wait until the Ray cluster has this many CPUs before starting."),
        click.option("--min-gpus", type=float, default=0.0, show_default=True,
                     help="Wait until the Ray cluster has this many GPUs before starting."),
        click.option("--min-wait", type=float, default=900.0, show_default=True,
                     help="Seconds to wait for --min-nodes/--min-cpus/--min-gpus, and for the nodes flow actors "
                          "or writers need, before the build fails."),
        click.option("--progress/--no-progress", default=True, show_default=True),
        click.option("--retry-errors", is_flag=True,
                     help="Compute the error rows of the version these inputs and settings gave again, "
                          "into a new version that shares every other shard."),
    ]
    for opt in reversed(opts):
        f = opt(f)
    return f


def make_build_config(o: dict):
    """Turn build options into a validated BuildConfig (raises click.UsageError with the reason)."""
    from pipeline.boxes import BoxesConfig
    from pipeline.build.config import BuildConfig, ShardConfig
    from pipeline.decode import DecodeConfig
    from pipeline.flow.warp import WarpConfig
    from pipeline.stages.config import DEFAULT_MAX_PIXELS, EncodeConfig, SampleConfig, WorkerConfig

    try:
        device = "cpu" if o["flow_device"] == "auto" else o["flow_device"]
        flow = make_flow_config(o["flow_algo"], o["flow_backend"], device, o["flow_param"], step=o["step"],
                                bound=o["bound"], batch_size=o["batch_size"])
        worker = WorkerConfig(decode=DecodeConfig(resize=o["resize"], fps=o["fps"], threads=o["decode_threads"]), flow=flow,
                              encode=EncodeConfig(rgb_quality=o["rgb_quality"], flow_quality=o["flow_quality"]),
                              sample=SampleConfig(clips=o["clips"], clip_len=o["clip_len"], max_frames=o["max_frames"],
                                                  chunk_frames=o["chunk_frames"]),
                              max_pixels=o.get("max_pixels", DEFAULT_MAX_PIXELS),
                              warp=WarpConfig(features=o.get("warp_features", "orb")) if o.get("flow_warp") else None)
        shard = ShardConfig(max_bytes=parse_size(o["shard_size"]), max_samples=o["shard_samples"], seed=o["seed"])
        boxes = BoxesConfig(path=o["boxes_path"], tolerance=o.get("box_tolerance", 1.0)) if o.get("boxes_path") else None
        return BuildConfig(worker=worker, shard=shard, split=o["split"], boxes=boxes)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from exc


def make_flow_config(algorithm: str, backend: str, device: str, params: tuple[str, ...], **kw):
    """A FlowConfig from CLI values; backend "auto" is torch on cuda and for RAFT, else opencv.
    Raises ValueError with the reason."""
    from pipeline.flow.config import FlowConfig, params_from_dict, split_torch_options
    from pipeline.flow.params import TorchOptions

    if backend == "auto":
        backend = auto_backend(algorithm, device)
    values, options = split_torch_options(parse_params(params)) if params else ({}, TorchOptions())
    typed = params_from_dict(algorithm, values) if values else None
    return FlowConfig(algorithm=algorithm, backend=backend, device=device, params=typed, torch_options=options, **kw)


def make_executor_from(o: dict, flow_device: str):
    from pipeline.build.executors import make_executor

    if o["executor"] == "local":
        return make_executor("local")
    actors = o["flow_actors"]
    if actors is None and flow_device.startswith("cuda"):
        actors = -1  # one per GPU, resolved once Ray is up
    return make_executor("ray", address=o["address"], num_cpus=o["num_cpus"], flow_actors=actors or 0,
                         actor_gpus=actor_gpus(o) if flow_device.startswith("cuda") else 0.0,
                         actor_resource=o["actor_resource"], **cluster_options(o))


def cluster_options(o: dict) -> dict:
    """The executor settings of the cluster's size and placement (RayConfig's names)."""
    return {"writer_resource": o.get("writer_resource"), "min_nodes": o.get("min_nodes", 0),
            "min_cpus": o.get("min_cpus", 0), "min_gpus": o.get("min_gpus", 0.0),
            "min_wait_s": o.get("min_wait", 900.0)}


def actor_gpus(o: dict) -> float:
    """GPUs per flow actor: 1 / --actors-per-gpu when given, else --actor-gpus."""
    per_gpu = o.get("actors_per_gpu")
    if per_gpu is None:
        return o["actor_gpus"]
    if per_gpu < 1:
        raise click.BadParameter(f"must be >= 1, got {per_gpu}", param_hint="--actors-per-gpu")
    if o["actor_gpus"] != 1.0:
        raise click.UsageError("give --actors-per-gpu or --actor-gpus, not both")
    return 1.0 / per_gpu


def resolve_auto_device(o: dict) -> dict:
    """`--flow-device auto`: cuda when TV-L1 or a learned flow is asked for (backend auto or torch) and the Ray
    cluster the build runs on has GPUs; cpu otherwise. Connects to Ray only to ask."""
    if o["flow_device"] != "auto":
        return o
    torch_flow = o["flow_algo"] in algorithms_for("torch")
    wants_gpu_flow = o["executor"] == "ray" and torch_flow and o["flow_backend"] in ("auto", "torch")
    gpus = 0.0
    if wants_gpu_flow:
        from pipeline.cluster.startup import RayConfig, cluster_gpus

        gpus = cluster_gpus(RayConfig(address=o["address"], num_cpus=o["num_cpus"]))
    device = "cuda" if gpus else "cpu"
    if gpus:
        log.info("the Ray cluster has %g GPU(s): TV-L1 runs in torch flow actors on cuda", gpus)
    return {**o, "flow_device": device}


def check_input(input_path: str, split: int | None) -> None:
    """Fail on a missing, empty or unreadable input before anything starts.

    `--flow-device auto` asks Ray for its GPUs, which starts a local Ray: a wrong path
    should be reported before that, not after. Listing the input once more is cheap beside
    the build that follows.
    """
    from pipeline import inputs

    refs, _ = inputs.discover(input_path, split=split)
    if not refs:
        raise ValueError(f"{input_path}: no videos found")


def run_build(input_path: str, output: str, o: dict):
    """Build with options `o`; shared by `flowshard build` and the job entrypoints."""
    from pipeline.build.run import build_dataset

    check_input(input_path, o["split"])
    cfg = make_build_config(resolve_auto_device(o))
    executor = make_executor_from(o, cfg.worker.flow.device)
    return build_dataset(input_path, output, cfg, executor=executor, progress=o["progress"],
                         retry_errors=o.get("retry_errors", False))


def echo_summary(s) -> None:
    click.echo(f"version {s.version}: {s.ok} of {s.videos} videos ok, {s.errors} error(s), {s.frames} frames, "
               f"{s.flow_fields} flow fields, {s.shards} shard(s), {s.bytes / 1e6:.1f} MB in {s.seconds:.1f}s "
               f"({s.flow_fields / max(s.seconds, 1e-9):.1f} pairs/s); {s.units_skipped} unit(s) already done; "
               f"{s.computed} video(s) computed, {s.reused} copied from stored shards"
               + (f"; previous version {s.parent}" if s.parent and s.parent != s.version else ""))
    for reason, n in sorted(s.failures.items(), key=lambda kv: -kv[1]):
        click.echo(f"  error x{n}: {reason}")


@cli.command()
@click.argument("input_path", metavar="INPUT")
@click.argument("output", metavar="OUTPUT")
@build_options
def build(input_path: str, output: str, **o) -> None:
    """Build a dataset from INPUT (class folders, a CSV/Parquet list, or a UCF101/HMDB51 root) into OUTPUT."""
    try:
        summary = run_build(input_path, output, o)
    except (FileNotFoundError, ValueError, OSError, RuntimeError) as exc:
        raise click.ClickException(str(exc)) from exc
    echo_summary(summary)
    click.echo(summary.version)


@cli.command()
@click.argument("dataset", metavar="OUTPUT[@VERSION]")
@click.option("--quick", is_flag=True, help="Check hashes and metadata only, without decoding images.")
def verify(dataset: str, quick: bool) -> None:
    """Check a version's shards (hash, size, count) and samples (schema, decodability); default: the latest."""
    from pipeline.verify import verify as run_verify

    report = run_verify(dataset, decode=not quick)
    for w in report.warnings:
        click.echo(f"warning: {w}", err=True)
    for p in report.problems:
        click.echo(f"problem: {p}", err=True)
    if not report.ok:
        raise click.ClickException(f"{dataset}: {len(report.problems)} problem(s) found")
    click.echo(f"{dataset}: ok ({report.shards} shards, {report.samples} samples)")


@cli.command()
@click.argument("dataset", metavar="OUTPUT[@VERSION]")
@click.option("--video", default=None, help="Video id (default: the first stored video).")
@click.option("-o", "--output", "out", default=None, help="PNG to write (default: <video>.png).")
@click.option("--columns", type=int, default=6, show_default=True)
def inspect(dataset: str, video: str | None, out: str | None, columns: int) -> None:
    """Print a dataset's summary and write a contact sheet PNG of one video."""
    from pipeline import open_dataset
    from pipeline.visualize import contact_sheet, write_png

    try:
        ds = open_dataset(dataset)
    except (FileNotFoundError, ValueError) as exc:
        raise click.ClickException(str(exc)) from exc
    counts = ds.info["counts"]
    click.echo(f"{dataset}: version {ds.version}, {counts['ok']} videos ({counts['splits']}), "
               f"{ds.num_classes} classes, {counts['shards']} shards, {counts['bytes'] / 1e6:.1f} MB, "
               f"{counts['errors']} error(s)")
    videos = ds.videos()
    if not videos:
        raise click.ClickException(f"{dataset}: no stored videos to show")
    video = video or videos[0].video_id
    try:
        sample = ds.read(video)
    except KeyError as exc:
        raise click.ClickException(str(exc.args[0])) from exc
    out = out or f"{video}.png"
    write_png(out, contact_sheet(sample, columns=columns))
    m = sample.meta
    click.echo(f"{video}: label {m['label']} ({m['label_id']}), {len(sample.frames)} frames, {len(sample.flow)} "
               f"flow fields of {m['size'][0]}x{m['size'][1]} ({m['flow']['algorithm']}), sheet -> {out}")


@cli.command()
@click.argument("output", metavar="OUTPUT")
@click.option("--json", "as_json", is_flag=True, help="Print the catalog as JSON.")
def versions(output: str, as_json: bool) -> None:
    """List the versions built in OUTPUT (the latest marked *), with counts, sizes and dates."""
    from pipeline.build.versions import list_versions

    rows = list_versions(output)
    if not rows:
        raise click.ClickException(f"{output}: no versions (no {output}/versions.parquet)")
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    click.echo(f"  {'VERSION':<16}  {'CREATED (UTC)':<19}  {'VIDEOS':>7}  {'ERRORS':>6}  {'SHARDS':>6}  "
               f"{'SIZE':>10}  {'NEW':>10}  PARENT")
    for r in rows:
        click.echo(f"{'*' if r['latest'] else ' '} {r['version']:<16}  {r['created']:<19}  {r['videos']:>7}  "
                   f"{r['errors']:>6}  {r['shards']:>6}  {_mb(r['bytes']):>10}  {_mb(r['new_bytes']):>10}  "
                   f"{r['parent'] or '-'}")


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


@cli.command()
@click.argument("output", metavar="OUTPUT")
@click.argument("old", metavar="A")
@click.argument("new", metavar="B", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print the differences as JSON.")
def diff(output: str, old: str, new: str | None, as_json: bool) -> None:
    """Videos added, removed and changed, and label changes, from version A to B (default: the latest)."""
    from pipeline.build.versions import diff_versions

    try:
        d = diff_versions(output, old, new)
    except (FileNotFoundError, ValueError) as exc:
        raise click.ClickException(str(exc)) from exc
    if as_json:
        click.echo(json.dumps(d, indent=2, ensure_ascii=False))
        return
    click.echo(f"{d['from']} -> {d['to']}: {len(d['added'])} added, {len(d['removed'])} removed, "
               f"{len(d['moved'])} moved, {len(d['changed'])} changed, {len(d['relabelled'])} relabelled")
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


@cli.command()
@click.argument("dataset", metavar="OUTPUT[@VERSION]")
@click.option("--json", "as_json", is_flag=True, help="Print the failures as JSON.")
@click.option("--all", "every", is_flag=True, help="List every failed video, not one example per reason.")
def report(dataset: str, as_json: bool, every: bool) -> None:
    """List the videos a version could not store, grouped by reason."""
    from pipeline.report import failure_groups, format_table

    try:
        groups = failure_groups(dataset)
    except (FileNotFoundError, ValueError) as exc:
        raise click.ClickException(str(exc)) from exc
    if as_json:
        click.echo(json.dumps(groups, indent=2, ensure_ascii=False))
        return
    for line in format_table(groups, every=every):
        click.echo(line)


@cli.command("pretrain-flow")
@click.argument("images", metavar="IMAGES")
@click.argument("output", metavar="OUT")
@click.option("--per-image", type=int, default=1, show_default=True, help="Videos per image and motion class.")
@click.option("--frames", type=int, default=16, show_default=True, help="Frames per video.")
@click.option("--size", "frame_size", default="340x256", show_default=True, help="Frame size WxH.")
@click.option("--test-fraction", type=float, default=0.2, show_default=True,
              help="Share of the images (the last in name order) whose videos form the test split.")
@click.option("--videos", default=None, help="Keep the generated videos here (default: a temporary folder).")
@build_options
def pretrain_flow(images: str, output: str, per_image: int, frames: int, frame_size: str, test_fraction: float,
                  videos: str | None, **o) -> None:
    """Flow from still IMAGES under synthetic camera and object motion, built into OUT (a dataset whose
    12 classes are the motions) for pre-training the temporal stream: `flowshard train OUT --streams flow`,
    then `flowshard train DATA --flow-weights RUN/last.pt`."""
    import tempfile

    from pipeline.synthetic.still_motion import StillMotionConfig, find_images, write_still_motion_set

    try:
        w, h = (int(v) for v in frame_size.lower().split("x"))
        cfg = StillMotionConfig(per_image=per_image, num_frames=frames, size=(w, h), test_fraction=test_fraction,
                                seed=o["seed"])
        paths = find_images(images)
        with tempfile.TemporaryDirectory(prefix="flowshard_still_") as tmp:
            listing, problems = write_still_motion_set(paths, videos or tmp, cfg)
            summary = run_build(str(listing), output, o)
    except (FileNotFoundError, ValueError, OSError, RuntimeError) as exc:
        raise click.ClickException(str(exc)) from exc
    for problem in problems:
        click.echo(f"skipped: {problem}", err=True)
    echo_summary(summary)
    click.echo(summary.version)


@cli.command()
@click.argument("dataset", metavar="DATASET[@VERSION]")
@click.argument("output", metavar="OUT")
@click.option("--format", "fmt", default="rawframes", show_default=True, type=click.Choice(["rawframes"]),
              help="rawframes: mmaction2's layout (img_%05d.jpg, flow_x_/flow_y_%05d.jpg, annotation lists).")
@click.option("--flow-quality", type=int, default=None,
              help="JPEG quality of the separate x and y images (default: the dataset's flow quality).")
def export(dataset: str, output: str, fmt: str, flow_quality: int | None) -> None:
    """Export a dataset for other tools: mmaction2 rawframes (RGB JPEG bytes copied, flow x/y split).

    docs/FORMAT.md ("mmaction2 rawframes export") says which list a config takes and what
    the pixel values mean.
    """
    from pipeline.export import export_rawframes

    try:
        s = export_rawframes(dataset, output, flow_quality=flow_quality)
    except (FileNotFoundError, FileExistsError, ValueError, OSError, RuntimeError) as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"{output}: {s.videos} video folders, {s.frames} frames, {s.flow_fields} flow fields"
               f"{' (and warped flow)' if s.warped else ''}; lists {', '.join(s.lists)}")


@cli.command("flow-check")
@click.option("--flow", "flow_algo", default="tvl1", show_default=True, type=click.Choice(ALGORITHMS))
@click.option("--flow-backend", default="auto", show_default=True, type=click.Choice(["auto", *BACKENDS]),
              help="auto: torch on cuda and for RAFT, else opencv.")
@click.option("--flow-param", multiple=True, metavar="KEY=VALUE", help="Estimator parameter, repeatable.")
@click.option("--device", default="cpu", show_default=True, help="cpu or cuda[:N] (torch backend).")
@click.option("--size", default="340x256", show_default=True, metavar="WxH", help="Size of the built-in pairs.")
@click.option("--pairs", type=int, default=4, show_default=True, help="Built-in photo pairs per motion.")
@click.option("--builtin/--no-builtin", default=True, show_default=True, help="Score the built-in photo pairs.")
@click.option("--pair", "user_pairs", type=(str, str), multiple=True, metavar="A B",
              help="Two frames of your own (any image files), scored against the next --gt; repeatable.")
@click.option("--gt", "user_gt", multiple=True, metavar="FILE.flo", help="Middlebury .flo ground truth of a --pair.")
@click.option("--batch-size", type=int, default=16, show_default=True, help="Frame pairs per estimator call.")
@click.option("--json", "json_path", default=None, metavar="FILE", help="Also write the scores as JSON.")
def flow_check(flow_algo, flow_backend, flow_param, device, size, pairs, builtin, user_pairs, user_gt,
               batch_size, json_path) -> None:
    """Score an estimator on pairs with known motion: EPE, outliers > 3 px and pairs/s.

    The built-in pairs are photographs warped by known fields (sub-pixel and pixel shifts,
    zoom, rotation, a smooth deformation), the ones bench/gpu_flow.py scores. OpenCV
    estimators run on one thread, as in a build worker.
    """
    from pipeline.flow import accuracy
    from pipeline.flow.estimators import make_estimator

    if len(user_pairs) != len(user_gt):
        raise click.UsageError(f"{len(user_pairs)} --pair and {len(user_gt)} --gt: give one .flo per pair")
    try:
        cfg = make_flow_config(flow_algo, flow_backend, device, flow_param, batch_size=batch_size)
        w, h = _wxh(size)
        cases = accuracy.builtin_cases(h, w, pairs) if builtin else []
        cases += [accuracy.file_case(a, b, gt) for (a, b), gt in zip(user_pairs, user_gt)]
        if not cases:
            raise ValueError("nothing to score: --no-builtin and no --pair")
        scores = accuracy.evaluate(make_estimator(cfg), cases, batch_size=batch_size)
    except (ValueError, OSError, RuntimeError) as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"{cfg.algorithm} ({cfg.backend}, {cfg.device}), params {json.dumps(cfg.params_dict())}")
    for line in accuracy.format_table(scores):
        click.echo(line)
    if json_path:
        report = {"flow": {**cfg.output_dict(), "device": cfg.device, "batch_size": batch_size},
                  "cases": [s.as_dict() for s in scores], "overall": accuracy.overall(scores).as_dict()}
        Path(json_path).write_text(json.dumps(report, indent=2) + "\n")


def _wxh(text: str) -> tuple[int, int]:
    m = re.fullmatch(r"\s*(\d+)\s*x\s*(\d+)\s*", text)
    if not m or min(int(m.group(1)), int(m.group(2))) < 16:
        raise ValueError(f"--size {text!r}: expected WxH of at least 16x16, e.g. 340x256")
    return int(m.group(1)), int(m.group(2))


@cli.command()
@click.option("--output", default="demo_out", show_default=True, help="Folder for the videos, dataset and PNG.")
@click.option("--flow", "flow_algo", default="tvl1", show_default=True, type=click.Choice(algorithms_for("opencv")))
@click.option("--executor", default="ray", show_default=True, type=click.Choice(["ray", "local"]))
def demo(output: str, flow_algo: str, executor: str) -> None:
    """Generate sample videos with known motion, build a dataset, verify it and write a PNG."""
    from jobs.demo import make_demo_videos

    root = Path(output)
    videos = make_demo_videos(root / "videos")
    ctx = click.get_current_context()
    ctx.invoke(build, input_path=str(videos), output=str(root / "dataset"),
               **_defaults(build, flow_algo=flow_algo, resize="none", executor=executor, shard_samples=4))
    ctx.invoke(verify, dataset=str(root / "dataset"), quick=False)
    ctx.invoke(inspect, dataset=str(root / "dataset"), video=None, out=str(root / "inspect.png"), columns=6)
    click.echo(f"demo done: dataset in {root / 'dataset'}, contact sheet {root / 'inspect.png'}")


def _defaults(command: click.Command, **overrides) -> dict:
    """Every option of `command` at its default, with `overrides` applied."""
    values = {}
    for p in command.params:
        if isinstance(p, click.Option):
            # click leaves an unset sentinel as the default of a `multiple` option: use ()
            multi_default = tuple(p.default) if isinstance(p.default, (list, tuple)) else ()
            values[p.name] = multi_default if p.multiple else p.default
    values.update(overrides)
    return values


from jobs.features import features_command  # noqa: E402
from jobs.train import clips_command, evaluate_command, train_command  # noqa: E402  (needs `cli` defined)

cli.add_command(clips_command)
cli.add_command(train_command)
cli.add_command(evaluate_command)
cli.add_command(features_command)


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="flowshard")


if __name__ == "__main__":
    main()
