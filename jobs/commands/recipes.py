"""`flowshard recipes [NAME]`: the training recipes (jobs.recipes), listed or shown one by one
with the paper's settings and ours side by side."""

from __future__ import annotations

import textwrap

import click

from jobs import recipes as recipe_files
from jobs.recipes import Recipe, flag_text

PAPER_WIDTH = 46  # the paper column of the side-by-side view; ours takes the same
DIFFERS = "*"  # marks a setting whose note says where ours differs from the paper


@click.command("recipes")
@click.argument("name", required=False)
def recipes_command(name: str | None) -> None:
    """List the training recipes (`train --recipe NAME`), or show one: the paper's settings and ours side by side."""
    try:
        lines = recipe_lines(recipe_files.load(name)) if name else list_lines()
    except ValueError as exc:
        raise click.ClickException(str(exc)) from exc
    for line in lines:
        click.echo(line)


def list_lines() -> list[str]:
    """One line per recipe: name@version, the paper (first author, year, arXiv id), its summary."""
    loaded = [recipe_files.load(n) for n in recipe_files.names()]
    width = max(len(r.label) for r in loaded)
    rows = [
        f"{r.label:<{width}}  {r.paper.authors.split(',')[0]} {r.paper.year} ({r.paper.where}): {r.summary}"
        for r in loaded
    ]
    return [*rows, "", "flowshard recipes NAME shows one; flowshard train DATASET --recipe NAME trains it."]


def recipe_lines(recipe: Recipe) -> list[str]:
    """The recipe: its paper, then every setting as paper | ours, each note below its row."""
    p = recipe.paper
    head = [
        f"{recipe.label}: {recipe.summary}",
        f"paper: {p.title}. {p.authors}, {p.year}. {p.where}.",
        f"table: {p.table}",
    ]
    if p.code:
        head.append(f"code:  {p.code}")
    resolved = recipe_files.resolved_defaults(recipe)
    rows = [side_by_side("", "PAPER", "OURS (flowshard train flags)")]
    for s in recipe.settings:
        ours = [ours_text(recipe, recipe_files.param_name(k), v, resolved) for k, v in s.ours.items()]
        rows.append(f"{DIFFERS if s.note else ' '} {s.name}")
        rows.append(side_by_side("", s.paper, "; ".join(ours) or "(nothing to set)"))
        if s.note:
            rows += textwrap.wrap(s.note, 2 * PAPER_WIDTH + 3, initial_indent="    why: ", subsequent_indent=" " * 9)
    flags = " ".join(flag_text(k, v) for k, v in recipe.flags().items())
    tail = [
        "",
        f"{DIFFERS} ours differs from the paper (see why).",
        f"flowshard train DATASET --recipe {recipe.name} is: flowshard train DATASET {flags}",
    ]
    return [*head, "", *rows, *tail]


def ours_text(recipe: Recipe, name: str, value, resolved: dict) -> str:
    """One flag of ours; a `default` one shown with the family's value and marked as the family's."""
    if value != recipe_files.DEFAULT:
        return flag_text(name, value)
    shown = flag_text(name, resolved[name]) if resolved[name] is not None else f"--{name.replace('_', '-')} unset"
    return f"{shown} ({recipe.model()} default)"


def side_by_side(margin: str, left: str, right: str) -> str:
    """Two wrapped columns, PAPER_WIDTH each, as one (multi-line) string."""
    a = textwrap.wrap(left, PAPER_WIDTH, break_on_hyphens=False) or [""]
    b = textwrap.wrap(right, PAPER_WIDTH, break_on_hyphens=False) or [""]
    n = max(len(a), len(b))
    a += [""] * (n - len(a))
    b += [""] * (n - len(b))
    return "\n".join(f"{margin}    {x:<{PAPER_WIDTH}} | {y}".rstrip() for x, y in zip(a, b, strict=True))
