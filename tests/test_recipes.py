"""Training recipes: each paper's setting by name (`train --recipe`), flags layered under the
command line and recorded, config.json taken back (`--config`), one definition of a family's
defaults, every recipe built at full size on the meta device and trained two steps on CPU."""
from __future__ import annotations

import dataclasses
import json

import pytest
import torch
import yaml
from click.testing import CliRunner
from test_clips import flowshard, motion_list

from jobs import recipes
from jobs.commands.recipes import recipes_command
from jobs.commands.train import make_train_config, train_command
from jobs.model_options import resolve_defaults
from jobs.train_flags import NotOffered, check_flags, layer, recipe_flags
from training.models import build_model, family

NAMES = recipes.names()
FAST = ["--weights", "none", "--device", "cpu", "--workers", "0", "--no-progress", "--batch-size", "2",
        "--epochs", "2", "--steps-per-epoch", "1", "--eval-every", "0", "--test-clips", "1"]
# Small sizes per recipe (the recipe's own sizes are built on the meta device below).
SMALL = {
    "feichtenhofer2016-conv-fusion": ["--strides", "1", "--clip-len", "4", "--crop-size", "32"],
    "st-resnet50": ["--strides", "1", "--clip-len", "4", "--crop-size", "32"],
    "siamese-transformations": ["--clip-len", "4", "--crop-size", "32", "--embed-dim", "16"],
    "karpathy-slow": ["--crop-size", "44"],
    "action-tubes": ["--det-fpn-channels", "16", "--det-head-dim", "32", "--det-anchor-sizes", "8,16,32,64,128",
                     "--det-proposals", "20", "--det-roi-batch", "16"],
}
SHRINK = {"width_mult": ["--width-mult", "0.0625"], "fc_dim": ["--fc-dim", "16"]}


@pytest.fixture(scope="module", autouse=True)
def one_thread(torch_one_thread):
    """Single-threaded torch (see conftest.torch_one_thread)."""


def train_context(*args: str):
    """The click context of `flowshard train DS -o OUT ARGS` (parsed, not run)."""
    return train_command.make_context("train", ["DS", "-o", "OUT", *args])


def offered_or_skip(recipe: recipes.Recipe, ctx) -> dict:
    """The recipe's converted flags; the test is skipped when this train command lacks some."""
    try:
        return recipe_flags(recipe, ctx)
    except NotOffered as exc:
        pytest.skip(f"recipe {recipe.label} needs {', '.join(exc.missing)}, not offered yet")


def test_every_recipe_states_its_paper_and_every_setting():
    assert len(NAMES) == 10
    for name in NAMES:
        r = recipes.load(name)
        assert r.version >= 1 and r.paper.title and r.paper.table and (r.paper.arxiv or r.paper.venue)
        assert {s.name for s in r.settings} >= set(recipes.REQUIRED_SETTINGS)
        assert all(s.paper for s in r.settings)


def test_a_malformed_recipe_is_refused_with_what_is_wrong():
    good = yaml.safe_load((recipes.resources.files(recipes).joinpath("c3d.yaml")).read_text())
    with pytest.raises(ValueError, match=r"settings \['dropout'\] are missing"):
        recipes.parse({**good, "settings": [s for s in good["settings"] if s["name"] != "dropout"]}, "c3d")
    twice = [*good["settings"], {"name": "extra", "paper": "x", "ours": {"crop-size": 64}}]
    with pytest.raises(ValueError, match="flag 'crop_size' is set by settings 'input size' and 'extra'"):
        recipes.parse({**good, "settings": twice}, "c3d")
    with pytest.raises(ValueError, match="version must be a positive integer"):
        recipes.parse({**good, "version": 0}, "c3d")
    with pytest.raises(ValueError, match="unknown recipe 'nope'.*c3d"):
        recipes.load("nope")


@pytest.mark.parametrize("name", NAMES)
def test_a_recipe_never_restates_its_family_defaults(name):
    """One definition: what the family defines (its input, its options' defaults, the shared
    defaults) the recipe takes as `default`, never as a second copy of the number."""
    recipe = recipes.load(name)
    offered_or_skip(recipe, train_context())
    assert recipes.restated_defaults(recipe) == []


def test_the_one_definition_check_finds_a_restated_default():
    c3d = recipes.load("c3d")
    settings = list(c3d.settings)
    settings[1] = dataclasses.replace(settings[1], ours={"crop_size": 128})  # c3d's INPUT: another value
    settings[2] = dataclasses.replace(settings[2], ours={"streams": "rgb"})  # c3d's INPUT: the same value
    settings[9] = dataclasses.replace(settings[9], ours={"dropout": 0.5})  # the shared default, restated
    settings[0] = dataclasses.replace(settings[0], ours={"model": "c3d", "width_mult": 1.0, "depth": "default"})
    problems = recipes.restated_defaults(dataclasses.replace(c3d, settings=tuple(settings)))
    assert len(problems) == 5, problems
    assert any(p.startswith("--crop-size 128: c3d defines crop_size itself (112)") for p in problems)
    assert any(p.startswith("--streams rgb: c3d defines") for p in problems)
    assert any(p.startswith("--dropout 0.5: the c3d default already") for p in problems)
    assert any(p.startswith("--width-mult 1.0: the c3d default already") for p in problems)
    assert "depth: `default`, but c3d has no default for it" in problems


def test_flags_the_command_lacks_are_named():
    with pytest.raises(NotOffered) as err:
        check_flags({"no-such-flag": 1, "arch": "alexnet", "epochs": 3}, train_context(), "recipe x@1")
    assert err.value.missing[0] == "--no-such-flag" and err.value.missing[1].startswith("--arch alexnet (choices: ")
    with pytest.raises(ValueError, match="--epochs many"):
        check_flags({"epochs": "many"}, train_context(), "recipe x@1")


@pytest.mark.parametrize("name", NAMES)
def test_every_recipe_builds_its_model_at_full_size_on_the_meta_device(name):
    recipe = recipes.load(name)
    ctx = train_context("--recipe", name)
    converted = offered_or_skip(recipe, ctx)
    o = {k: v for k, v in ctx.params.items() if k not in ("dataset", "output", "progress", "recipe", "config")}
    prov = layer(ctx, o, name, None)
    o = dict(prov.options)
    o["clip_len"] = o["clip_len"] or 10
    classes = 101
    if o["task"] == "detect":
        o["model"], classes = "detection", 22  # J-HMDB's 21 actions and background
    resolved = resolve_defaults(o)
    cfg = make_train_config("DS", "OUT", classes, resolved, command=prov.record(resolved))
    assert cfg.model.model == recipe.model()
    assert cfg.command["recipe"] == {"name": name, "version": recipe.version}
    for key, value in converted.items():  # every recipe value reaches the config as given
        assert cfg.command["flags"][key] == value and cfg.command["sources"][key] == f"recipe {recipe.label}"
    with torch.device("meta"):
        model = build_model(dataclasses.replace(cfg.model, weights=None, flow_weights=None))
    assert sum(p.numel() for p in model.parameters()) > 1_000_000


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """8 motion videos of 20 frames (64x48), 4 classes, one test video each."""
    root = tmp_path_factory.mktemp("recipes_build")
    flowshard("build", str(motion_list(root, per_class=2, test_from=1)), str(root / "ds"), "--flow", "farneback",
              "--resize", "none", "--executor", "local", "--no-progress")
    return root / "ds"


@pytest.fixture(scope="module")
def det_built(tmp_path_factory):
    """A detection set: 2 actions, 1 train + 1 test video each, 10 frames, boxes per frame."""
    from pipeline.synthetic.detection import DetectionSetConfig, make_detection_dataset

    root = tmp_path_factory.mktemp("recipes_det")
    det = make_detection_dataset(root / "set", DetectionSetConfig(classes=("jump", "slide"), train_per_class=1,
                                                                  test_per_class=1, frames=10, size=(64, 48)))
    flowshard("build", str(det.list_csv), str(root / "ds"), "--boxes", str(det.boxes_csv), "--flow", "dis", "--resize",
              "none", "--step", "2", "--executor", "local", "--no-progress")
    return root / "ds"


def small_flags(recipe: recipes.Recipe) -> list[str]:
    """Flags that shrink the recipe's run to a few CPU seconds."""
    flags = recipe.flags()
    options = {spec.key for spec in getattr(family(recipe.model()), "OPTIONS", ())}
    extra = [a for key, args in SHRINK.items() if key in options for a in args]
    if "lr_steps" in flags:
        extra += ["--lr-steps", "1"]  # 2 epochs of 1 step: the drop after the first
    if flags.get("arch") in ("resnet50", "vgg16"):
        # The smallest backbone of the same code path; VGG-16 itself trains two small steps in
        # tests/test_fusion_models.py, and every recipe's own backbone builds at full size above.
        extra += ["--arch", "resnet18"]
    return [*FAST, *extra, *SMALL.get(recipe.name, ["--crop-size", "32"])]


@pytest.mark.parametrize("name", NAMES)
def test_every_recipe_trains_two_steps_at_a_small_size(name, built, det_built, tmp_path):
    recipe = recipes.load(name)
    offered_or_skip(recipe, train_context())
    run = tmp_path / "run"
    dataset = det_built if recipe.model() == "detection" else built
    flowshard("train", str(dataset), "--recipe", name, "--output", str(run), *small_flags(recipe))
    summary = json.loads((run / "train_summary.json").read_text())
    assert summary["steps"] == 2
    command = json.loads((run / "config.json").read_text())["command"]
    assert command["recipe"] == {"name": name, "version": recipe.version}
    assert command["sources"]["batch_size"] == command["sources"]["device"] == "command line"
    converted = recipe_flags(recipe, train_context())
    taken = [k for k in converted if command["sources"][k] == f"recipe {recipe.label}"]
    assert taken and all(command["flags"][k] == converted[k] for k in taken)
    assert command["sources"]["crop_size"] in ("command line", "model or dataset")


def test_config_json_takes_the_run_back_and_flags_override_it(built, tmp_path):
    first, again, changed = tmp_path / "first", tmp_path / "again", tmp_path / "changed"
    recipe = recipes.load("karpathy-slow")  # a recipe every train command offers
    flowshard("train", str(built), "--recipe", recipe.name, "--output", str(first), *small_flags(recipe))
    saved = json.loads((first / "config.json").read_text())
    flowshard("train", str(built), "--config", str(first / "config.json"), "--output", str(again))
    repeat = json.loads((again / "config.json").read_text())

    def run_free(cfg):
        return {k: v for k, v in cfg.items() if k not in ("output", "command")}

    assert run_free(repeat) == run_free(saved) and repeat["command"]["flags"] == saved["command"]["flags"]
    assert repeat["command"]["config"] == str(first / "config.json")
    assert set(repeat["command"]["sources"].values()) == {f"config {first / 'config.json'}"}
    flowshard("train", str(built), "--config", str(first / "config.json"), "--output", str(changed),
              "--lr", "0.002", "--epochs", "1")
    over = json.loads((changed / "config.json").read_text())
    assert over["lr"] == 0.002 and over["epochs"] == 1 and over["command"]["sources"]["lr"] == "command line"
    assert over["data"] == saved["data"]
    # The same keys in YAML, spelled as flags, read the same.
    flat = tmp_path / "flags.yaml"
    flat.write_text(yaml.safe_dump({k.replace("_", "-"): v for k, v in saved["command"]["flags"].items()}))
    flowshard("train", str(built), "--config", str(flat), "--output", str(tmp_path / "yaml"))
    assert run_free(json.loads((tmp_path / "yaml" / "config.json").read_text())) == run_free(saved)


def test_a_config_without_flags_or_with_unknown_ones_is_refused(built, tmp_path):
    old = tmp_path / "config.json"
    old.write_text(json.dumps({"dataset": "x", "output": "y", "data": {}, "model": {}}))
    bad = tmp_path / "bad.yaml"
    bad.write_text("epochs: 2\ncrop-sise: 32\n")
    runner = CliRunner()
    for path, message in ((old, "without the flags that made it"), (bad, "needs --crop-sise")):
        result = runner.invoke(train_command, [str(built), "--config", str(path), "-o", str(tmp_path / "r")])
        assert result.exit_code != 0 and message in result.output, result.output
    result = runner.invoke(train_command, [str(built), "--recipe", "nope", "-o", str(tmp_path / "r")])
    assert result.exit_code != 0 and "unknown recipe 'nope'" in result.output


def test_recipes_lists_them_and_shows_one_side_by_side():
    listing = CliRunner().invoke(recipes_command, [])
    assert listing.exit_code == 0
    assert all(f"{n}@" in listing.output for n in NAMES) and "arXiv 1412.0767" in listing.output
    shown = CliRunner().invoke(recipes_command, ["c3d"])
    assert shown.exit_code == 0, shown.output
    text = shown.output
    assert "Learning Spatiotemporal Features with 3D Convolutional Networks" in text and "PAPER" in text
    assert "--crop-size 112 (c3d default)" in text and "--rgb-frames 16" in text
    assert "| --lr 0.003" in text and "why: 112 of 128 is scale 0.875" in text
    assert "flowshard train DATASET --recipe c3d is: flowshard train DATASET --model c3d" in text
    missing = CliRunner().invoke(recipes_command, ["nope"])
    assert missing.exit_code != 0 and "unknown recipe 'nope'" in missing.output
