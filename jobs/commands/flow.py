"""`flowshard flow-check`, and the FlowConfig every command that computes flow builds from its options."""

from __future__ import annotations

import json
import re
from pathlib import Path

import click

from jobs.parsing import parse_params
from pipeline.flow import accuracy
from pipeline.flow.config import FlowConfig, params_from_dict, split_torch_options
from pipeline.flow.estimators import ALGORITHMS, BACKENDS, algorithms_for, auto_backend, make_estimator
from pipeline.flow.params import DTYPES, TorchOptions

BACKEND_CHOICES = ("auto", *BACKENDS)  # auto: make_flow_config decides
# --flow-param names the torch backend adds to each estimator's own
TORCH_PARAMS_HELP = f"compile=1, dtype={'|'.join(DTYPES)}, sync_every=N (0: fixed iterations)"


def make_flow_config(algorithm: str, backend: str, device: str, params: tuple[str, ...], **kw) -> FlowConfig:
    """A FlowConfig from CLI values; backend "auto" is torch on cuda and for RAFT, else opencv.
    Raises ValueError with the reason."""
    if backend == "auto":
        backend = auto_backend(algorithm, device)
    values, options = split_torch_options(parse_params(params)) if params else ({}, TorchOptions())
    typed = params_from_dict(algorithm, values) if values else None
    return FlowConfig(algorithm=algorithm, backend=backend, device=device, params=typed, torch_options=options, **kw)


def runs_in_torch(algorithm: str) -> bool:
    """Whether `algorithm` has a torch implementation, which a GPU can run: the learned
    networks and TV-L1 (the one classic estimator written in torch)."""
    return algorithm in algorithms_for("torch")


@click.command("flow-check")
@click.option("--flow", "flow_algo", default="tvl1", show_default=True, type=click.Choice(ALGORITHMS))
@click.option(
    "--flow-backend",
    default="auto",
    show_default=True,
    type=click.Choice(BACKEND_CHOICES),
    help="auto: torch on cuda and for RAFT, else opencv.",
)
@click.option("--flow-param", multiple=True, metavar="KEY=VALUE", help="Estimator parameter, repeatable.")
@click.option("--device", default="cpu", show_default=True, help="cpu or cuda[:N] (torch backend).")
@click.option("--size", default="340x256", show_default=True, metavar="WxH", help="Size of the built-in pairs.")
@click.option("--pairs", type=int, default=4, show_default=True, help="Built-in photo pairs per motion.")
@click.option("--builtin/--no-builtin", default=True, show_default=True, help="Score the built-in photo pairs.")
@click.option(
    "--pair",
    "user_pairs",
    type=(str, str),
    multiple=True,
    metavar="A B",
    help="Two frames of your own (any image files), scored against the next --gt; repeatable.",
)
@click.option("--gt", "user_gt", multiple=True, metavar="FILE.flo", help="Middlebury .flo ground truth of a --pair.")
@click.option("--batch-size", type=int, default=16, show_default=True, help="Frame pairs per estimator call.")
@click.option("--json", "json_path", default=None, metavar="FILE", help="Also write the scores as JSON.")
def flow_check(
    flow_algo, flow_backend, flow_param, device, size, pairs, builtin, user_pairs, user_gt, batch_size, json_path
) -> None:
    """Score an estimator on pairs with known motion: EPE, outliers > 3 px and pairs/s.

    The built-in pairs are photographs warped by known fields (sub-pixel and pixel shifts,
    zoom, rotation, a smooth deformation), the ones bench/gpu_flow.py scores. OpenCV
    estimators run on one thread, as in a build worker.
    """
    if builtin and pairs < 1:
        raise click.BadParameter(f"must be >= 1 with the built-in pairs, got {pairs}", param_hint="--pairs")
    if len(user_pairs) != len(user_gt):
        raise click.UsageError(f"{len(user_pairs)} --pair and {len(user_gt)} --gt: give one .flo per pair")
    try:
        cfg = make_flow_config(flow_algo, flow_backend, device, flow_param, batch_size=batch_size)
        w, h = _wxh(size)
        cases = accuracy.builtin_cases(h, w, pairs) if builtin else []
        cases += [accuracy.file_case(a, b, gt) for (a, b), gt in zip(user_pairs, user_gt, strict=True)]
        if not cases:
            raise ValueError("nothing to score: --no-builtin and no --pair")
        scores = accuracy.evaluate(make_estimator(cfg), cases, batch_size=batch_size)
    except (ValueError, OSError, RuntimeError) as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"{cfg.algorithm} ({cfg.backend}, {cfg.device}), params {json.dumps(cfg.params_dict())}")
    for line in accuracy.format_table(scores):
        click.echo(line)
    if json_path:
        report = {
            "flow": {**cfg.output_dict(), "device": cfg.device, "batch_size": batch_size},
            "cases": [s.as_dict() for s in scores],
            "overall": accuracy.overall(scores).as_dict(),
        }
        Path(json_path).write_text(json.dumps(report, indent=2) + "\n")


def _wxh(text: str) -> tuple[int, int]:
    m = re.fullmatch(r"\s*(\d+)\s*x\s*(\d+)\s*", text)
    if not m or min(int(m.group(1)), int(m.group(2))) < 16:
        raise ValueError(f"--size {text!r}: expected WxH of at least 16x16, e.g. 340x256")
    return int(m.group(1)), int(m.group(2))
