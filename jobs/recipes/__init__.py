"""Named, versioned training recipes: one paper's setting each, as flags of `flowshard train`.

A recipe is a YAML file in this folder, shipped with the package (`flowshard train DATASET
--recipe NAME`). It names the paper (title, arXiv id, the table it reproduces), its own
`version` (bump it whenever a value changes: runs record NAME@VERSION), a one-line summary,
and its settings. Each setting states the paper's value as text (with where it was read:
[code] for the authors' released code, [paper, unverified] where the PDF was not checked),
ours as the `flowshard train` flags that realise it, and a note where they differ and why.

One definition: a value the model family already defines (its INPUT or input_defaults, the
defaults of its options, or the defaults every family shares, jobs.model_options) is not
written again. The recipe says `default` and takes the family's, which `flowshard recipes
NAME` shows resolved; `restated_defaults` finds a recipe that restates one (a test runs it
over every recipe).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources
from typing import Any

import yaml

DEFAULT = "default"  # a flag whose value is the model family's default
SUFFIX = ".yaml"
# Every recipe states these settings (a paper's value may be "not stated"; ours may be empty).
REQUIRED_SETTINGS = (
    "network",
    "input size",
    "frames",
    "flow stack (L)",
    "sampling",
    "training crops",
    "test views",
    "optimiser",
    "lr schedule",
    "dropout",
    "epochs",
    "initialisation",
)
ARXIV = re.compile(r"^\d{4}\.\d{4,5}$")


@dataclass(frozen=True, kw_only=True)
class Paper:
    """The paper a recipe follows, and the table whose setting it is."""

    title: str
    authors: str
    year: int
    arxiv: str  # "" for a paper not on arXiv (then `venue` says where it is)
    table: str
    venue: str = ""
    code: str = ""  # the authors' released code, where there is some

    @property
    def where(self) -> str:
        """arXiv id, or the venue of a paper not on arXiv."""
        return f"arXiv {self.arxiv}" if self.arxiv else self.venue


@dataclass(frozen=True, kw_only=True)
class Setting:
    """One setting: the paper's value (text), ours (train flags: name -> value or DEFAULT),
    and a note where they differ."""

    name: str
    paper: str
    ours: dict[str, Any]
    note: str = ""


@dataclass(frozen=True, kw_only=True)
class Recipe:
    """A paper's training setting as `flowshard train` flags."""

    name: str
    version: int
    summary: str
    paper: Paper
    settings: tuple[Setting, ...]

    @property
    def label(self) -> str:
        """NAME@VERSION, as runs record it."""
        return f"{self.name}@{self.version}"

    def flags(self) -> dict[str, Any]:
        """The flags the recipe sets (parameter names, e.g. crop_size), DEFAULT ones left out."""
        return {k: v for k, v in self.all_flags().items() if v != DEFAULT}

    def default_flags(self) -> tuple[str, ...]:
        """The flags that take the model family's default."""
        return tuple(k for k, v in self.all_flags().items() if v == DEFAULT)

    def all_flags(self) -> dict[str, Any]:
        return {param_name(k): v for s in self.settings for k, v in s.ours.items()}

    def model(self) -> str:
        """The model family the recipe trains (`--task detect` trains the detector)."""
        flags = self.flags()
        return "detection" if flags.get("task") == "detect" else flags.get("model", "two_stream")


def param_name(flag: str) -> str:
    """`--crop-size` or `crop-size` -> crop_size (click's parameter name)."""
    return flag.lstrip("-").replace("-", "_")


def flag_text(name: str, value: Any) -> str:
    """A flag as typed: --crop-size 112, --flip / --no-flip."""
    flag = "--" + name.replace("_", "-")
    if isinstance(value, bool):
        return flag if value else f"--no-{flag[2:]}"
    return f"{flag} {value}"


def names() -> list[str]:
    """The recipes shipped with the package, sorted."""
    return sorted(f.name[: -len(SUFFIX)] for f in resources.files(__name__).iterdir() if f.name.endswith(SUFFIX))


def load(name: str) -> Recipe:
    """The recipe `name` (ValueError naming the recipes when there is none)."""
    if name not in names():
        raise ValueError(f"unknown recipe {name!r}; choose one of {names()} (`flowshard recipes` lists them)")
    text = resources.files(__name__).joinpath(name + SUFFIX).read_text(encoding="utf-8")
    return parse(yaml.safe_load(text), name)


def parse(d: Any, name: str) -> Recipe:
    """A recipe from its YAML mapping (ValueError naming what is missing or malformed)."""
    if not isinstance(d, dict):
        raise ValueError(f"recipe {name}: expected a mapping, got {type(d).__name__}")
    missing = [k for k in ("name", "version", "summary", "paper", "settings") if k not in d]
    if missing:
        raise ValueError(f"recipe {name}: missing {missing}")
    if d["name"] != name:
        raise ValueError(f"recipe {name}: its file says name {d['name']!r}")
    if not isinstance(d["version"], int) or d["version"] < 1:
        raise ValueError(f"recipe {name}: version must be a positive integer, got {d['version']!r}")
    fields: dict[str, Any] = {k: str(v) if k != "year" else int(v) for k, v in d["paper"].items()}
    paper = Paper(**fields)
    if not (ARXIV.match(paper.arxiv) or (paper.arxiv == "" and paper.venue)):
        raise ValueError(
            f"recipe {name}: arxiv must look like 1406.2199 (or be empty, with a venue), got {paper.arxiv!r}"
        )
    settings = tuple(
        Setting(
            name=s["name"],
            paper=str(s["paper"]).strip(),
            ours=dict(s.get("ours") or {}),
            note=str(s.get("note") or "").strip(),
        )
        for s in d["settings"]
    )
    check_settings(name, settings)
    return Recipe(name=name, version=d["version"], summary=str(d["summary"]).strip(), paper=paper, settings=settings)


def check_settings(name: str, settings: tuple[Setting, ...]) -> None:
    """Every required setting present, and each flag set by one setting only."""
    have = [s.name for s in settings]
    lacking = [r for r in REQUIRED_SETTINGS if r not in have]
    if lacking:
        raise ValueError(f"recipe {name}: settings {lacking} are missing")
    seen: dict[str, str] = {}
    for s in settings:
        for key in map(param_name, s.ours):
            if key in seen:
                raise ValueError(f"recipe {name}: flag {key!r} is set by settings {seen[key]!r} and {s.name!r}")
            seen[key] = s.name


def restated_defaults(recipe: Recipe) -> list[str]:
    """What breaks the one-definition rule: a flag the model family defines for itself (INPUT /
    input_defaults) given a value, a flag given the very value the family or every family
    defaults to, or `default` on a flag no family default exists for. Empty when none."""
    from jobs.model_options import family_defaults, family_input

    model, flags = recipe.model(), recipe.flags()
    own = family_input(model, flags)
    defaults = family_defaults(model, flags)
    problems = [
        f"{flag_text(k, v)}: {model} defines {k} itself ({own[k]!r}); write `default`"
        for k, v in flags.items()
        if k in own
    ]
    problems += [
        f"{flag_text(k, v)}: the {model} default already; write `default`"
        for k, v in flags.items()
        if k not in own and k in defaults and defaults[k] == v
    ]
    problems += [
        f"{k}: `default`, but {model} has no default for it" for k in recipe.default_flags() if k not in defaults
    ]
    return problems


def resolved_defaults(recipe: Recipe) -> dict[str, Any]:
    """The values the recipe's `default` flags take (its model family's defaults)."""
    from jobs.model_options import family_defaults

    defaults = family_defaults(recipe.model(), recipe.flags())
    return {k: defaults.get(k) for k in recipe.default_flags()}
