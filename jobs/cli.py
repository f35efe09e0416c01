"""The `flowshard` command: the only place that reads argv, the environment and YAML.

The commands live in jobs.commands, one module per group of commands, and are imported
only when one of them runs or shows its help (`LazyGroup`): `flowshard --help` reads their
one-line descriptions from the modules' source instead, so it stays fast although the
training commands import torch at the top of their module.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import logging
import os
import sys

import click

from pipeline import storage

log = logging.getLogger("flowshard")

# Explicit table: command name -> (module, attribute of the click command in it).
COMMANDS: dict[str, tuple[str, str]] = {
    "build": ("jobs.commands.build", "build"),
    "pretrain-flow": ("jobs.commands.build", "pretrain_flow"),
    "demo": ("jobs.commands.build", "demo"),
    "verify": ("jobs.commands.datasets", "verify"),
    "inspect": ("jobs.commands.datasets", "inspect"),
    "versions": ("jobs.commands.datasets", "versions"),
    "diff": ("jobs.commands.datasets", "diff"),
    "tag": ("jobs.commands.versions", "tag"),
    "prune": ("jobs.commands.versions", "prune"),
    "log": ("jobs.commands.versions", "log"),
    "report": ("jobs.commands.datasets", "report"),
    "export": ("jobs.commands.datasets", "export"),
    "clips": ("jobs.commands.datasets", "clips"),
    "flow-check": ("jobs.commands.flow", "flow_check"),
    "train": ("jobs.commands.train", "train_command"),
    "evaluate": ("jobs.commands.train", "evaluate_command"),
    "features": ("jobs.commands.train", "features_command"),
    "recipes": ("jobs.commands.recipes", "recipes_command"),
}
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


class LazyGroup(click.Group):
    """A group whose commands (COMMANDS) are imported when one is invoked or shows its help."""

    def list_commands(self, ctx: click.Context) -> list[str]:  # noqa: ARG002 (click's signature)
        return sorted(COMMANDS)  # click's own order: by name

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:  # noqa: ARG002
        if cmd_name not in COMMANDS:
            return None
        module, attribute = COMMANDS[cmd_name]
        return getattr(importlib.import_module(module), attribute)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """The command list of `flowshard --help`, without importing any command module."""
        names = self.list_commands(ctx)
        limit = formatter.width - 6 - max(len(n) for n in names)
        rows = [(name, short_help(name, limit)) for name in names]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


def short_help(name: str, limit: int = 45) -> str:
    """The one-line help of command `name` as click would make it, from the docstring of its
    function in its module's source (the module is not imported)."""
    module, attribute = COMMANDS[name]
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        raise ValueError(f"command {name!r}: module {module} not found")
    with open(spec.origin, encoding="utf-8") as f:
        tree = ast.parse(f.read())
    doc = next(
        (ast.get_docstring(node) for node in tree.body if isinstance(node, ast.FunctionDef) and node.name == attribute),
        None,
    )
    return click.Command(name, help=doc).get_short_help_str(limit)


def setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper()),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def configure_storage(text: str | None) -> None:
    """Object-storage settings for this process and the processes it starts (local Ray workers,
    loader workers): AWS_REGION also as botocore's AWS_DEFAULT_REGION, and --storage-options
    (JSON) applied here and exported as fsspec's FSSPEC_<PROTOCOL> variables."""
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


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--log-level", default="INFO", show_default=True, type=click.Choice(LOG_LEVELS, case_sensitive=False))
@click.option(
    "--storage-options",
    default=None,
    metavar="JSON",
    envvar="FLOWSHARD_STORAGE_OPTIONS",
    help="Options of the filesystems behind s3:// (any fsspec) URLs, per protocol or for all: "
    '\'{"s3": {"endpoint_url": "http://127.0.0.1:9000"}}\'. Default: the AWS environment '
    "(AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, ...) and fsspec's config. Env: FLOWSHARD_STORAGE_OPTIONS.",
)
def cli(log_level: str, storage_options: str | None) -> None:
    """flowshard: labelled videos -> optical flow -> WebDataset shards -> two-stream training.

    INPUT, OUTPUT and DATASET may be local folders or object-storage URLs (s3://bucket/prefix).
    """
    setup_logging(log_level)
    configure_storage(storage_options)


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="flowshard")


if __name__ == "__main__":
    main()
