"""Cluster job: build a dataset from a named YAML config, then print a summary.

    ray job submit --working-dir . -- python -m jobs.build_dataset --config jobs/configs/ucf101.yaml

The YAML holds `name`, `input`, `output` and a `build` mapping whose keys are the options of
`flowshard build` with underscores (`flow_backend: torch`, `shard_size: 1GB`, ...). Values
given with `--input`, `--output` or `--set KEY=VALUE` override the file. Progress goes to the
job log; the last line is the summary as JSON (version id, counts, failures by reason,
throughput).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import click
import yaml

from jobs.cli import setup_logging
from jobs.commands.build import build, option_defaults, run_build
from jobs.parsing import parse_params

log = logging.getLogger("flowshard.job")

_ALIASES = {"flow": "flow_algo", "boxes": "boxes_path"}  # YAML keys are the CLI flags (their parameter names differ)


def load_job_config(path: str | Path, overrides: dict | None = None) -> dict:
    """Read a job YAML into {"name", "input", "output", "options"}, naming any unknown key."""
    raw = yaml.safe_load(Path(path).read_text()) or {}
    unknown_top = sorted(set(raw) - {"name", "input", "output", "build", "description"})
    if unknown_top:
        raise ValueError(f"{path}: unknown key(s) {unknown_top}")
    options = option_defaults(build, progress=False)
    given = {**(raw.get("build") or {}), **(overrides or {})}
    given = {_ALIASES.get(k, k): v for k, v in given.items()}
    unknown = sorted(set(given) - set(options) - {"input", "output"})
    if unknown:
        raise ValueError(f"{path}: unknown build option(s) {unknown}; known: {sorted(options)}")
    options.update({k: v for k, v in given.items() if k not in ("input", "output")})
    if isinstance(options.get("flow_param"), dict):  # YAML mapping -> KEY=VALUE pairs
        options["flow_param"] = tuple(f"{k}={json.dumps(v)}" for k, v in options["flow_param"].items())
    cfg = {
        "name": raw.get("name", Path(path).stem),
        "input": given.get("input", raw.get("input")),
        "output": given.get("output", raw.get("output")),
        "options": options,
    }
    for key in ("input", "output"):
        if not cfg[key]:
            raise ValueError(f"{path}: no {key} given (set it in the file or with --{key})")
    return cfg


def summary_dict(name: str, s) -> dict:
    """The job's closing record."""
    return {
        "job": name,
        "version": s.version,
        "output": s.output,
        "videos": s.videos,
        "ok": s.ok,
        "errors": s.errors,
        "failures": s.failures,
        "frames": s.frames,
        "flow_fields": s.flow_fields,
        "shards": s.shards,
        "bytes": s.bytes,
        "seconds": round(s.seconds, 2),
        "pairs_per_second": round(s.flow_fields / max(s.seconds, 1e-9), 2),
    }


@click.command()
@click.option("--config", "config_path", required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--input", "input_path", default=None, help="Override the config's input.")
@click.option("--output", default=None, help="Override the config's output.")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help="Override a build option.")
@click.option("--log-level", default="INFO", show_default=True)
def main(config_path: str, input_path: str | None, output: str | None, sets: tuple[str, ...], log_level: str) -> None:
    """Build the dataset a job config describes."""
    setup_logging(log_level)
    overrides = parse_params(sets)
    overrides.update({k: v for k, v in (("input", input_path), ("output", output)) if v})
    try:
        job = load_job_config(config_path, overrides)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from exc
    log.info("job %s: %s -> %s", job["name"], job["input"], job["output"])
    summary = run_build(job["input"], job["output"], job["options"])
    record = summary_dict(job["name"], summary)
    log.info(
        "job %s done: version %s, %d/%d videos ok, %.1f pairs/s",
        job["name"],
        summary.version,
        summary.ok,
        summary.videos,
        record["pairs_per_second"],
    )
    for reason, count in sorted(summary.failures.items(), key=lambda kv: -kv[1]):
        log.warning("failed x%d: %s", count, reason)
    click.echo(json.dumps(record, sort_keys=True))


if __name__ == "__main__":
    main()
