"""Family options: declared next to each model (training.models.option_spec), assembled by
jobs.model_options from training.models.FAMILIES into `flowshard train`'s flags."""
from __future__ import annotations

import types

import click
import pytest
from click.testing import CliRunner

from jobs import model_options as mo
from training import models
from training.models import c3d, factorized, fstcn, karpathy
from training.models.option_spec import WIDTH_MULT, OptionSpec


def options_by_flag() -> dict[str, click.Option]:
    return {o.opts[0]: o for o in mo.family_options()}


def test_an_option_several_families_take_is_declared_once_and_names_them_all():
    flags = options_by_flag()
    assert flags["--width-mult"].help.startswith("c3d, r3d, r2plus1d, fstcn, karpathy: channel width")
    assert flags["--fc-dim"].help.startswith("c3d, fstcn, karpathy: ")
    assert flags["--depth"].help == "r3d, r2plus1d: ResNet depth."
    assert list(flags["--depth"].type.choices) == ["10", "18", "26", "34"]
    assert [f for f in flags if f.startswith("--fusion")] == ["--fusion-type", "--fusion-layer", "--fusion-point"]


def test_family_options_from_cli_match_the_flags():
    values = {"width_mult": 0.5, "fc_dim": None, "crop_size": 112, "conv_bn": True, "depth": "10",
              "rgb_frames": 25, "diff_frames": 9, "time_fusion": "late", "multires": False}
    assert c3d.options_from_cli(values) == c3d.Options(width_mult=0.5, fc_dim=4096, size=112, batch_norm=True)
    assert factorized.options_from_cli(values) == factorized.Options(depth=10, width=32)
    assert fstcn.options_from_cli({**values, "fc_dim": 64, "crop_size": 204}) == fstcn.Options(
        frames=16, diff=9, width_mult=0.5, fc_dims=(64, 32), size=204)
    assert karpathy.options_from_cli(values).time_fusion == "late"
    assert mo.model_options("two_stream", values) is None


def test_input_defaults_come_from_the_family_and_given_flags_win():
    unset = dict.fromkeys(mo.BASE_DEFAULTS)
    c3d_run = mo.resolve_defaults({**unset, "model": "c3d"})
    assert (c3d_run["streams"], c3d_run["rgb_frames"], c3d_run["crop_size"], c3d_run["sampling"]) == ("rgb", 16, 112,
                                                                                                      "simonyan")
    assert mo.resolve_defaults({**unset, "model": "c3d", "crop_size": 96})["crop_size"] == 96
    siamese = mo.resolve_defaults({**unset, "model": "siamese"})
    assert (siamese["sampling"], siamese["segments"]) == ("tsn", 8)
    assert mo.resolve_defaults({**unset, "model": "siamese", "snippets": 4})["sampling"] == "strided"
    late = mo.resolve_defaults({**unset, "model": "karpathy", "time_fusion": "late"})
    assert (late["rgb_frames"], late["frame_stride"], late["crop_size"]) == (2, 15, 178)


def test_a_new_family_is_one_module_and_one_row(monkeypatch):
    toy = types.ModuleType("toy")
    toy.OPTIONS = (OptionSpec(flag="toy-depth", type=int, default=3, help="layers."), WIDTH_MULT)
    toy.INPUT = {"crop_size": 64}
    toy.options_from_cli = lambda values: ("toy", values["toy_depth"], values["width_mult"])
    monkeypatch.setitem(models.FAMILIES, "toy", toy)
    flags = options_by_flag()
    assert flags["--toy-depth"].help == "toy: layers." and "karpathy, toy: " in flags["--width-mult"].help

    @click.command(cls=mo.FamilyCommand)
    @click.option("--task", default="classify")
    @click.option("--partial-bn/--no-partial-bn", default=False)
    def command(**o):
        click.echo(repr(mo.model_options(o["model"], o)))

    result = CliRunner().invoke(command, ["--model", "toy", "--toy-depth", "5"])
    assert result.exit_code == 0, result.output
    assert result.output.strip() == "('toy', 5, 1.0)"
    assert mo.resolve_defaults({"model": "toy", "crop_size": None})["crop_size"] == 64


def test_two_families_may_not_give_one_flag_two_meanings(monkeypatch):
    clash = types.ModuleType("clash")
    clash.OPTIONS = (OptionSpec(flag="width-mult", type=float, default=2.0, help="something else."),)
    monkeypatch.setitem(models.FAMILIES, "clash", clash)
    with pytest.raises(ValueError, match="width-mult"):
        mo.family_options()


def test_option_spec_refuses_a_default_outside_its_choices():
    with pytest.raises(ValueError, match="choices"):
        OptionSpec(flag="pool", default="mean", choices=("max", "avg"), help="x")
    with pytest.raises(ValueError, match="type"):
        OptionSpec(flag="sizes", type=list, default=[], help="x")
