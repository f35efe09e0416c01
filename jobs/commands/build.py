"""`flowshard build|pretrain-flow|demo`: build a dataset, and the options every build shares
(also read by the job entrypoint jobs.build_dataset)."""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import click

from jobs.commands.datasets import inspect, verify
from jobs.commands.flow import BACKEND_CHOICES, TORCH_PARAMS_HELP, make_flow_config, runs_in_torch
from jobs.demo import make_demo_videos
from jobs.parsing import parse_size
from pipeline import inputs
from pipeline.boxes import BoxesConfig
from pipeline.build.config import BuildConfig, ShardConfig
from pipeline.build.executors import EXECUTORS, make_executor
from pipeline.build.plan import RETRY_MODES
from pipeline.build.run import build_dataset
from pipeline.cluster.startup import RayConfig, cluster_gpus
from pipeline.decode import DecodeConfig
from pipeline.flow.estimators import ALGORITHMS, algorithms_for
from pipeline.flow.warp import FEATURES as WARP_FEATURES
from pipeline.flow.warp import WarpConfig
from pipeline.stages.config import DEFAULT_MAX_PIXELS, DEFAULT_MIN_COVERAGE, EncodeConfig, SampleConfig, WorkerConfig
from pipeline.synthetic.still_motion import StillMotionConfig, find_images, write_still_motion_set

log = logging.getLogger("flowshard")

CPU_ALGORITHMS = algorithms_for("opencv")  # what the demo offers: no weights to fetch, no GPU


def build_options(f):
    """Options shared by `build` and the job entrypoints."""
    opts = [
        click.option("--split", type=int, default=None, help="Official split N of a UCF101/HMDB51 root."),
        click.option("--resize", default="short:256", show_default=True, help="short:N, WxH (e.g. 340x256) or none."),
        click.option(
            "--fps", type=float, default=None, help="Resample to this frame rate (default: keep every frame)."
        ),
        click.option(
            "--decode-threads",
            type=int,
            default=1,
            show_default=True,
            help="ffmpeg threads per decoder (0: ffmpeg's choice); parallelism comes from decoding several videos.",
        ),
        click.option(
            "--flow",
            "flow_algo",
            default="tvl1",
            show_default=True,
            type=click.Choice(ALGORITHMS),
            help="raft_* run torchvision RAFT, sea_raft_* SEA-RAFT, both on RGB frames, from "
            "--flow-param weights=FILE (never downloaded).",
        ),
        click.option(
            "--flow-backend",
            default="auto",
            show_default=True,
            type=click.Choice(BACKEND_CHOICES),
            help="auto: torch on GPUs (and for RAFT), else opencv.",
        ),
        click.option(
            "--flow-device",
            default="auto",
            show_default=True,
            help="cpu, cuda[:N], or auto: cuda when TV-L1 runs on a Ray cluster that has GPUs.",
        ),
        click.option(
            "--flow-param",
            multiple=True,
            metavar="KEY=VALUE",
            help="Estimator parameter, repeatable (see docs/FORMAT.md for each algorithm's names); "
            f"torch backend also: {TORCH_PARAMS_HELP}.",
        ),
        click.option(
            "--flow-warp",
            is_flag=True,
            default=False,
            help="Also store warped flow (camera motion removed by a homography, TSN's third modality).",
        ),
        click.option(
            "--warp-features",
            default="orb",
            show_default=True,
            type=click.Choice(WARP_FEATURES),
            help="Descriptors matched to estimate the camera motion (--flow-warp).",
        ),
        click.option("--step", type=int, default=1, show_default=True, help="Flow between frames t and t+step."),
        click.option("--bound", type=float, default=20.0, show_default=True, help="Quantization bound in pixels."),
        click.option(
            "--clips", type=int, default=0, show_default=True, help="Keep N uniformly spaced clips (0: dense)."
        ),
        click.option("--clip-len", type=int, default=10, show_default=True, help="Flow fields per clip."),
        click.option(
            "--max-frames",
            type=int,
            default=1500,
            show_default=True,
            help="Frames per sample; longer videos become parts.",
        ),
        click.option("--chunk-frames", type=int, default=64, show_default=True, help="Frames per unit of flow work."),
        click.option(
            "--batch-size",
            type=int,
            default=None,
            help="Frame pairs per estimator call (default: by estimator and frame size, e.g. 16 on CPU, "
            "about 128 TV-L1 pairs at 340x256 on a GPU).",
        ),
        click.option("--rgb-quality", type=int, default=90, show_default=True),
        click.option("--flow-quality", type=int, default=95, show_default=True),
        click.option(
            "--max-pixels",
            type=int,
            default=DEFAULT_MAX_PIXELS,
            show_default=True,
            help="Refuse (as an error row) a video whose frames are larger, before decoding it.",
        ),
        click.option(
            "--min-coverage",
            type=float,
            default=DEFAULT_MIN_COVERAGE,
            show_default=True,
            help="Store a video only if it decodes at least this share of the frames its container "
            "declares (duration x rate); a shorter one (a download cut short) is an error row. "
            "0 stores whatever decodes, as release 0.1 did.",
        ),
        click.option("--shard-size", default="1GB", show_default=True, help="Maximum tar size (e.g. 1GB, 256MB)."),
        click.option("--shard-samples", type=int, default=1000, show_default=True, help="Maximum samples per tar."),
        click.option("--seed", type=int, default=0, show_default=True, help="Seed of the video-to-shard shuffle."),
        click.option(
            "--boxes",
            "boxes_path",
            default=None,
            metavar="FILE",
            help="Per-frame action boxes to store with the samples: a CSV video,frame,x1,y1,x2,y2,"
            "label[,track], a UCF101-24 .pkl, or a folder of J-HMDB puppet_mask.mat files.",
        ),
        click.option(
            "--box-tolerance",
            type=float,
            default=1.0,
            show_default=True,
            help="Pixels a box may stick out of the frame (clipped) before its video is an error row.",
        ),
        click.option("--executor", default="ray", show_default=True, type=click.Choice(EXECUTORS)),
        click.option(
            "--address",
            default=None,
            envvar="RAY_ADDRESS",
            help="Ray cluster address; 'auto' reuses the Ray that `ray start --head` runs on this machine "
            "(no start-up per build). Default: $RAY_ADDRESS, else a private local Ray on loopback, "
            "started once the inputs are checked.",
        ),
        click.option("--num-cpus", type=int, default=None, help="CPUs of the local Ray (default: all)."),
        click.option("--flow-actors", type=int, default=None, help="Flow actors (default: one per GPU with cuda)."),
        click.option("--actor-gpus", type=float, default=1.0, show_default=True, help="GPUs per flow actor."),
        click.option(
            "--actors-per-gpu",
            type=int,
            default=None,
            help="Flow actors sharing each GPU (sets --actor-gpus to 1/N); their batches interleave.",
        ),
        click.option("--actor-resource", default=None, help="Custom Ray resource that places flow actors."),
        click.option(
            "--writer-resource",
            default=None,
            help="Custom Ray resource that places shard writers (e.g. on-demand nodes; one unit each).",
        ),
        click.option(
            "--min-nodes",
            type=int,
            default=0,
            show_default=True,
            help="Wait (asking the autoscaler) until the Ray cluster has this many nodes before starting.",
        ),
        click.option(
            "--min-cpus",
            type=int,
            default=0,
            show_default=True,
            help="Wait until the Ray cluster has this many CPUs before starting.",
        ),
        click.option(
            "--min-gpus",
            type=float,
            default=0.0,
            show_default=True,
            help="Wait until the Ray cluster has this many GPUs before starting.",
        ),
        click.option(
            "--min-wait",
            type=float,
            default=900.0,
            show_default=True,
            help="Seconds to wait for --min-nodes/--min-cpus/--min-gpus, and for the nodes flow actors "
            "or writers need, before the build fails.",
        ),
        click.option("--progress/--no-progress", default=True, show_default=True),
        click.option(
            "--wait",
            "lock_wait_s",
            type=float,
            default=0.0,
            show_default=True,
            metavar="SECONDS",
            help="Wait this long for a running build or prune of OUTPUT to finish (0: refuse at once).",
        ),
        click.option(
            "--retry-errors",
            type=click.Choice(RETRY_MODES),
            is_flag=False,
            flag_value="transient",
            default=None,
            help="Compute the error rows of the version these inputs and settings gave again, into a "
            "new version that shares every shard it had: those whose failure was transient (a lost "
            "worker, storage), or with 'all' the broken files' too. Videos that now succeed go into "
            "a small new shard unit. Give it after INPUT and OUTPUT, or as --retry-errors=all.",
        ),
    ]
    for opt in reversed(opts):
        f = opt(f)
    return f


def make_build_config(o: dict) -> BuildConfig:
    """Turn build options into a validated BuildConfig (raises click.UsageError with the reason)."""
    try:
        device = "cpu" if o["flow_device"] == "auto" else o["flow_device"]
        flow = make_flow_config(
            o["flow_algo"],
            o["flow_backend"],
            device,
            o["flow_param"],
            step=o["step"],
            bound=o["bound"],
            batch_size=o["batch_size"],
        )
        worker = WorkerConfig(
            decode=DecodeConfig(resize=o["resize"], fps=o["fps"], threads=o["decode_threads"]),
            flow=flow,
            encode=EncodeConfig(rgb_quality=o["rgb_quality"], flow_quality=o["flow_quality"]),
            sample=SampleConfig(
                clips=o["clips"], clip_len=o["clip_len"], max_frames=o["max_frames"], chunk_frames=o["chunk_frames"]
            ),
            max_pixels=o.get("max_pixels", DEFAULT_MAX_PIXELS),
            min_coverage=o.get("min_coverage", DEFAULT_MIN_COVERAGE),
            warp=WarpConfig(features=o.get("warp_features", "orb")) if o.get("flow_warp") else None,
        )
        shard = ShardConfig(max_bytes=parse_size(o["shard_size"]), max_samples=o["shard_samples"], seed=o["seed"])
        boxes = (
            BoxesConfig(path=o["boxes_path"], tolerance=o.get("box_tolerance", 1.0)) if o.get("boxes_path") else None
        )
        return BuildConfig(worker=worker, shard=shard, split=o["split"], boxes=boxes)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from exc


def make_executor_from(o: dict, flow_device: str):
    """The executor the options ask for; Ray flow actors only when the flow runs on cuda."""
    if o["executor"] == "local":
        return make_executor("local")
    actors = o["flow_actors"]
    if actors is None and flow_device.startswith("cuda"):
        actors = -1  # one per GPU, resolved once Ray is up
    return make_executor(
        "ray",
        address=o["address"],
        num_cpus=o["num_cpus"],
        flow_actors=actors or 0,
        actor_gpus=actor_gpus(o) if flow_device.startswith("cuda") else 0.0,
        actor_resource=o["actor_resource"],
        **cluster_options(o),
    )


def cluster_options(o: dict) -> dict:
    """The executor settings of the cluster's size and placement (RayConfig's names)."""
    return {
        "writer_resource": o.get("writer_resource"),
        "min_nodes": o.get("min_nodes", 0),
        "min_cpus": o.get("min_cpus", 0),
        "min_gpus": o.get("min_gpus", 0.0),
        "min_wait_s": o.get("min_wait", 900.0),
    }


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
    wants_gpu_flow = o["executor"] == "ray" and runs_in_torch(o["flow_algo"]) and o["flow_backend"] in ("auto", "torch")
    gpus = cluster_gpus(RayConfig(address=o["address"], num_cpus=o["num_cpus"])) if wants_gpu_flow else 0.0
    if gpus:
        log.info("the Ray cluster has %g GPU(s): TV-L1 runs in torch flow actors on cuda", gpus)
    return {**o, "flow_device": "cuda" if gpus else "cpu"}


def check_input(input_path: str, split: int | None) -> None:
    """Fail on a missing, empty or unreadable input before anything starts.

    `--flow-device auto` asks Ray for its GPUs, which starts a local Ray: a wrong path
    should be reported before that, not after. Listing the input once more is cheap beside
    the build that follows.
    """
    refs, _ = inputs.discover(input_path, split=split)
    if not refs:
        raise ValueError(f"{input_path}: no videos found")


def run_build(input_path: str, output: str, o: dict):
    """Build with options `o`; shared by `flowshard build` and the job entrypoints."""
    check_input(input_path, o["split"])
    make_build_config(o)  # every other option checked before Ray starts (resolve_auto_device may start it)
    actor_gpus(o)
    cfg = make_build_config(resolve_auto_device(o))
    executor = make_executor_from(o, cfg.worker.flow.device)
    return build_dataset(
        input_path,
        output,
        cfg,
        executor=executor,
        progress=o["progress"],
        retry_errors=o.get("retry_errors") or False,
        lock_wait_s=o.get("lock_wait_s", 0.0),
    )


def echo_summary(s) -> None:
    click.echo(
        f"version {s.version}: {s.ok} of {s.videos} videos ok, {s.errors} error(s), {s.frames} frames, "
        f"{s.flow_fields} flow fields, {s.shards} shard(s), {s.bytes / 1e6:.1f} MB in {s.seconds:.1f}s "
        f"({s.flow_fields / max(s.seconds, 1e-9):.1f} pairs/s); {s.units_skipped} unit(s) already done; "
        f"{s.computed} video(s) computed, {s.reused} copied from stored shards"
        + (f"; previous version {s.parent}" if s.parent and s.parent != s.version else "")
    )
    for reason, n in sorted(s.failures.items(), key=lambda kv: -kv[1]):
        click.echo(f"  error x{n}: {reason}")


@click.command()
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


@click.command("pretrain-flow")
@click.argument("images", metavar="IMAGES")
@click.argument("output", metavar="OUT")
@click.option("--per-image", type=int, default=1, show_default=True, help="Videos per image and motion class.")
@click.option("--frames", type=int, default=16, show_default=True, help="Frames per video.")
@click.option("--size", "frame_size", default="340x256", show_default=True, help="Frame size WxH.")
@click.option(
    "--test-fraction",
    type=float,
    default=0.2,
    show_default=True,
    help="Share of the images (the last in name order) whose videos form the test split.",
)
@click.option("--videos", default=None, help="Keep the generated videos here (default: a temporary folder).")
@build_options
def pretrain_flow(
    images: str,
    output: str,
    per_image: int,
    frames: int,
    frame_size: str,
    test_fraction: float,
    videos: str | None,
    **o,
) -> None:
    """Flow from still IMAGES under synthetic camera and object motion, built into OUT (a dataset whose
    12 classes are the motions) for pre-training the temporal stream: `flowshard train OUT --streams flow`,
    then `flowshard train DATA --flow-weights RUN/last.pt`."""
    try:
        w, h = (int(v) for v in frame_size.lower().split("x"))
        cfg = StillMotionConfig(
            per_image=per_image, num_frames=frames, size=(w, h), test_fraction=test_fraction, seed=o["seed"]
        )
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


@click.command()
@click.option("--output", default="demo_out", show_default=True, help="Folder for the videos, dataset and PNG.")
@click.option("--flow", "flow_algo", default="tvl1", show_default=True, type=click.Choice(CPU_ALGORITHMS))
@click.option("--executor", default="ray", show_default=True, type=click.Choice(EXECUTORS))
def demo(output: str, flow_algo: str, executor: str) -> None:
    """Generate sample videos with known motion, build a dataset, verify it and write a PNG."""
    root = Path(output)
    videos = make_demo_videos(root / "videos")
    ctx = click.get_current_context()
    ctx.invoke(
        build,
        input_path=str(videos),
        output=str(root / "dataset"),
        **option_defaults(build, flow_algo=flow_algo, resize="none", executor=executor, shard_samples=4),
    )
    ctx.invoke(verify, dataset=str(root / "dataset"), quick=False)
    ctx.invoke(inspect, dataset=str(root / "dataset"), video=None, out=str(root / "inspect.png"), columns=6)
    click.echo(f"demo done: dataset in {root / 'dataset'}, contact sheet {root / 'inspect.png'}")


def option_defaults(command: click.Command, **overrides) -> dict:
    """Every option of `command` at its default, with `overrides` applied."""
    values = {}
    for p in command.params:
        if isinstance(p, click.Option):
            # click leaves an unset sentinel as the default of a `multiple` option: use ()
            multi_default = tuple(p.default) if isinstance(p.default, (list, tuple)) else ()
            values[p.name] = multi_default if p.multiple else p.default
    values.update(overrides)
    return values
