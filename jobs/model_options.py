"""`--model` and the per-family options of `flowshard train`: flags -> ModelConfig.options.

Each model family (training.models.FAMILIES) declares, next to its model, its options
(`OPTIONS`, training.models.option_spec), the data settings a flag left unset takes
(`INPUT`, or `input_defaults(values)` where they depend on its options: a C3D clip is 16
frames at 112 pixels, a two-stream snippet one frame at 224) and `options_from_cli(values)`,
its Options from the parsed flags. This module only assembles them from the table: a new
family is one module and one row of FAMILIES. Any flag the user gives wins.

The family modules import torch, so the table is read when the train command's parameters
are first needed (FamilyCommand), not when the command is registered: `flowshard --help`
stays fast.
"""

from __future__ import annotations

import click

# Settings of flags left unset, for every model; each family's INPUT overrides them.
BASE_DEFAULTS = {
    "streams": "both",
    "rgb_frames": 1,
    "frame_stride": 1,
    "sampling": "simonyan",
    "segments": 3,
    "snippets": 1,
    "strides": "1",
    "crop_size": 224,
    "dropout": 0.5,
    "flow_dropout": None,
}
MODEL_AFTER = "task"  # --model follows this parameter in the command's listing
FAMILY_OPTIONS_AFTER = "partial_bn"  # and the families' options follow this one


class FamilyCommand(click.Command):
    """A click command whose --model choices and family options come from
    training.models.FAMILIES, added the first time its parameters are needed."""

    families_added = False

    def get_params(self, ctx: click.Context) -> list[click.Parameter]:
        if not self.families_added:
            self.params = with_family_params(self.params)
            self.families_added = True
        return super().get_params(ctx)


def with_family_params(params: list[click.Parameter]) -> list[click.Parameter]:
    """`params` with --model after MODEL_AFTER and every family's options after FAMILY_OPTIONS_AFTER."""
    names = [p.name for p in params]
    if MODEL_AFTER not in names or FAMILY_OPTIONS_AFTER not in names:
        raise ValueError(
            f"the command needs parameters {MODEL_AFTER!r} and {FAMILY_OPTIONS_AFTER!r} "
            f"to place --model and the family options after, got {names}"
        )
    added = {MODEL_AFTER: [model_option()], FAMILY_OPTIONS_AFTER: family_options()}
    return [q for p in params for q in (p, *added.get(p.name, []))]


def model_option() -> click.Option:
    """--model: one of training.models.FAMILIES."""
    from training.models import FAMILIES

    return click.Option(
        ["--model"],
        default="two_stream",
        show_default=True,
        type=click.Choice(list(FAMILIES)),
        help="Model family (see README: one command per model).",
    )


def family_options() -> list[click.Option]:
    """Every family's options, each once (in FAMILIES order of first use), its help prefixed
    with the families that take it."""
    from training.models import FAMILIES

    takers: dict = {}
    for name, fam in FAMILIES.items():
        for spec in getattr(fam, "OPTIONS", ()):
            takers.setdefault(spec, []).append(name)
    flags = [spec.flag for spec in takers]
    clashes = sorted({flag for flag in flags if flags.count(flag) > 1})
    if clashes:  # one flag, two meanings: declare it once (training.models.option_spec) and share it
        raise ValueError(f"families declare different options named {clashes}")
    return [click_option(spec, names) for spec, names in takers.items()]


def click_option(spec, families: list[str]) -> click.Option:
    """The click option of an OptionSpec taken by `families`."""
    text = f"{', '.join(families)}: {spec.help}"
    if spec.type is bool:
        return click.Option(
            [f"--{spec.flag}/--no-{spec.flag}"], default=spec.default, show_default=spec.show_default, help=text
        )
    kind = click.Choice(list(spec.choices)) if spec.choices else spec.type
    return click.Option([f"--{spec.flag}"], type=kind, default=spec.default, show_default=spec.show_default, help=text)


def family_input(model: str, values: dict) -> dict:
    """The data settings family `model` defines for itself (its INPUT, or input_defaults(values)
    where they depend on its options' `values`)."""
    from training.models import family

    fam = family(model)
    return dict(fam.input_defaults(values) if hasattr(fam, "input_defaults") else getattr(fam, "INPUT", {}))


def family_defaults(model: str, values: dict) -> dict:
    """Every value a flag left unset takes with model `model`: BASE_DEFAULTS, the family's
    input (family_input) and the defaults of the family's options."""
    from training.models import family

    options = {spec.key: spec.default for spec in getattr(family(model), "OPTIONS", ())}
    return {**BASE_DEFAULTS, **family_input(model, values), **options}


def resolve_defaults(o: dict) -> dict:
    """The options with each unset (None) data flag taken from the model's defaults."""
    defaults = {**BASE_DEFAULTS, **family_input(o["model"], o)}
    if o.get("sampling") is None and (o.get("snippets") is not None or o.get("strides") is not None):
        defaults["sampling"] = "strided"  # --snippets and --strides describe strided clips
    return {**o, **{k: v for k, v in defaults.items() if o.get(k) is None}}


def model_options(model: str, o: dict):
    """The family Options the flags describe (None: the family has none)."""
    from training.models import family

    fam = family(model)
    return fam.options_from_cli(o) if hasattr(fam, "options_from_cli") else None


def model_takes_snippets(model: str) -> bool:
    """Whether the family's network takes clips of a fixed number of snippets in time order
    (its module sets ORDERED_SNIPPETS; then ModelConfig.snippets = --snippets); otherwise it
    averages whatever number of snippets it is given."""
    from training.models import family

    return bool(getattr(family(model), "ORDERED_SNIPPETS", False))
