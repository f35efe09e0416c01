"""The flags of `flowshard train` from their layers, and the record of where each came from.

Layers, each overriding the one before: the command's defaults, a recipe (`--recipe NAME`,
jobs.recipes), a configuration file (`--config FILE`: a run's config.json, or a YAML or
JSON mapping of flags), and the flags given on the command line, which always win. Flags
still unset are then taken from the model family and the dataset (jobs.model_options).

The run's config.json records the outcome under "command" (TrainConfig.command): every
flag's value ("flags"), where it came from ("sources"), the recipe (NAME@VERSION) and the
configuration file. `--config` reads "command.flags" back, so `flowshard train DATASET
--config runs/x/config.json -o runs/y` trains with the same flags; the rest of config.json
is derived from them.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import click
import yaml
from click.core import ParameterSource

from jobs import recipes

log = logging.getLogger(__name__)

# Parameters that belong to one run and are not taken from a recipe or a configuration file.
NOT_LAYERED = ("dataset", "output", "resume", "progress", "recipe", "config")
COMMAND_LINE = "command line"
DEFAULT = "default"
DERIVED = "model or dataset"  # an unset flag filled in by the model family or the dataset


class NotOffered(ValueError):
    """Flags (or values of a choice) a recipe or file needs that this train command lacks."""

    def __init__(self, origin: str, missing: list[str]):
        self.missing = tuple(missing)
        super().__init__(f"{origin} needs {', '.join(missing)}, which this `flowshard train` does not offer")


def layered_params(ctx: click.Context) -> dict[str, click.Parameter]:
    """The command's parameters a recipe or file may set, by name."""
    return {
        p.name: p
        for p in ctx.command.get_params(ctx)
        if p.name and isinstance(p, click.Option) and p.name not in NOT_LAYERED and p.name != "help"
    }


def check_flags(flags: dict[str, Any], ctx: click.Context, origin: str) -> dict[str, Any]:
    """`flags` (names with - or _) converted as the command line would convert them. A flag the
    command lacks, or a value its choices lack, raises NotOffered naming them; another bad
    value a ValueError naming it."""
    params = layered_params(ctx)
    out: dict[str, Any] = {}
    missing: list[str] = []
    for raw, value in flags.items():
        name = recipes.param_name(str(raw))
        param = params.get(name)
        if param is None:
            missing.append("--" + name.replace("_", "-"))
            continue
        try:
            out[name] = convert(param, value, ctx)
        except click.BadParameter as exc:
            if isinstance(param.type, click.Choice):
                missing.append(f"{recipes.flag_text(name, value)} (choices: {', '.join(map(str, param.type.choices))})")
            else:
                raise ValueError(f"{origin}: {recipes.flag_text(name, value)}: {exc.message}") from None
    if missing:
        raise NotOffered(origin, missing)
    return out


def recipe_flags(recipe: recipes.Recipe, ctx: click.Context) -> dict[str, Any]:
    """The recipe's flags, converted (check_flags); its `default` flags must exist too."""
    params = layered_params(ctx)
    absent = ["--" + k.replace("_", "-") for k in recipe.default_flags() if k not in params]
    if absent:
        raise NotOffered(f"recipe {recipe.label}", absent)
    return check_flags(recipe.flags(), ctx, f"recipe {recipe.label}")


def convert(param: click.Parameter, value: Any, ctx: click.Context) -> Any:
    """A value from YAML or JSON, converted by the parameter's type (None stays unset)."""
    if value is None:
        return None
    text = value if isinstance(value, bool) else str(value)  # numeric choices compare as text
    return param.type_cast_value(ctx, text)


def read_config(path: str) -> dict[str, Any]:
    """The flags of a configuration file: a run's config.json ("command": {"flags": ...}) or a
    mapping of flags (YAML or JSON)."""
    text = Path(path).read_text(encoding="utf-8")
    try:
        d = json.loads(text) if path.endswith(".json") else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as exc:
        raise ValueError(f"--config {path}: not valid {'JSON' if path.endswith('.json') else 'YAML'}: {exc}") from None
    if not isinstance(d, dict):
        raise ValueError(f"--config {path}: expected a mapping of flags, got {type(d).__name__}")
    if "command" in d:
        command = d["command"] or {}
        if not isinstance(command.get("flags"), dict):
            raise ValueError(f"--config {path}: its 'command' holds no flags")
        return command["flags"]
    if "data" in d and "model" in d:
        raise ValueError(
            f"--config {path} is a run configuration without the flags that made it (written before "
            "runs recorded them): start from a recipe or a mapping of flags"
        )
    return d


class Provenance:
    """The train options as layered, and where each value came from."""

    def __init__(self, ctx: click.Context, o: dict[str, Any]):
        self.ctx = ctx
        self.options = dict(o)
        self.sources = {k: COMMAND_LINE if given(ctx, k) else DEFAULT for k in o}
        self.recipe: recipes.Recipe | None = None
        self.config: str | None = None

    def apply(self, flags: dict[str, Any], source: str) -> None:
        """Take `flags` except those given on the command line."""
        for name, value in flags.items():
            if self.sources.get(name) != COMMAND_LINE:
                self.options[name], self.sources[name] = value, source

    def record(self, resolved: dict[str, Any]) -> dict[str, Any]:
        """What config.json keeps under "command", given the options with the model's and the
        dataset's defaults filled in."""
        keys = sorted(k for k in resolved if k in self.sources and k not in NOT_LAYERED)
        sources = {
            k: DERIVED if self.options.get(k) is None and resolved[k] is not None else self.sources[k] for k in keys
        }
        return {
            "flags": {k: resolved[k] for k in keys},
            "sources": sources,
            "recipe": {"name": self.recipe.name, "version": self.recipe.version} if self.recipe else None,
            "config": self.config,
        }


def given(ctx: click.Context, name: str) -> bool:
    """Whether option `name` was given on the command line (or by its environment variable)."""
    return ctx.get_parameter_source(name) in (ParameterSource.COMMANDLINE, ParameterSource.ENVIRONMENT)


def layer(ctx: click.Context, o: dict[str, Any], recipe: str | None, config: str | None) -> Provenance:
    """The options `o` parsed by the train command, with the recipe's and the configuration
    file's flags under the ones given on the command line."""
    prov = Provenance(ctx, o)
    if recipe:
        prov.recipe = recipes.load(recipe)
        prov.apply(recipe_flags(prov.recipe, ctx), f"recipe {prov.recipe.label}")
    if config:
        prov.config = config
        prov.apply(check_flags(read_config(config), ctx, f"--config {config}"), f"config {config}")
    overridden = sorted(k for k, s in prov.sources.items() if s == COMMAND_LINE)
    if prov.recipe or config:
        log.info(
            "flags: recipe %s, config %s; given on the command line: %s",
            prov.recipe.label if prov.recipe else "none",
            config or "none",
            ", ".join(overridden) or "none",
        )
    return prov
