"""Every command, given wrong files (missing, empty, random bytes, text, a folder where a file
belongs, a file where a folder belongs) and wrong values, ends in a clean error: a non-zero
exit, a message naming the argument or file, and no traceback. Nothing here starts Ray:
errors must be found before it would start."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from jobs.cli import cli

FIXTURE = Path(__file__).parent / "fixtures" / "release-0.1"


@pytest.fixture(autouse=True)
def no_ray(monkeypatch):
    import ray

    from jobs.commands import build
    from pipeline.cluster import startup

    def refuse(*args, **kwargs):
        raise AssertionError("Ray was started before the arguments were checked")

    monkeypatch.setattr(ray, "init", refuse)
    monkeypatch.setattr(startup, "cluster_gpus", refuse)
    monkeypatch.setattr(build, "cluster_gpus", refuse)


@pytest.fixture
def bad(tmp_path) -> dict[str, Path]:
    """Wrong inputs by name: each a path in tmp_path."""
    (tmp_path / "empty").write_bytes(b"")
    (tmp_path / "random.bin").write_bytes(bytes(range(256)) * 7 + b"\x80\x02garbage")
    (tmp_path / "text.txt").write_text("this is not what you think it is\n")
    (tmp_path / "folder").mkdir()
    return {"missing": tmp_path / "missing", "empty": tmp_path / "empty", "random": tmp_path / "random.bin",
            "text": tmp_path / "text.txt", "folder": tmp_path / "folder"}


@pytest.fixture
def release(tmp_path) -> Path:
    """A copy of release 0.1's dataset and run (a built dataset and a checkpoint)."""
    root = tmp_path / "release"
    shutil.copytree(FIXTURE / "dataset", root / "dataset")
    shutil.copytree(FIXTURE / "run", root / "run")
    return root


def clean_error(args: list, *named: str) -> str:
    """Run flowshard with `args`; assert a clean error whose output names each of `named`."""
    result = CliRunner().invoke(cli, [str(a) for a in args])
    out = result.output
    assert result.exit_code not in (0, None), f"{args}: exit 0\n{out}"
    assert isinstance(result.exception, SystemExit), f"{args}: raised {result.exception!r}\n{out}"
    assert "Traceback" not in out, f"{args}:\n{out}"
    for word in named:
        assert word in out, f"{args}: {word!r} not named in\n{out}"
    return out


WRONG_FILES = ("missing", "empty", "random", "text", "folder")
DATASET_COMMANDS = [["verify"], ["inspect"], ["versions"], ["report"], ["diff", "A"], ["export", "OUT"],
                    ["clips", "OUT"], ["train", "--output", "OUT", "--workers", "0"]]


@pytest.mark.parametrize("kind", WRONG_FILES)
@pytest.mark.parametrize("command", DATASET_COMMANDS, ids=lambda c: c[0])
def test_a_wrong_dataset_is_named(bad, tmp_path, command, kind):
    name, *rest = command
    rest = [str(tmp_path / "out") if r == "OUT" else r for r in rest]
    clean_error([name, bad[kind], *rest], bad[kind].name)


@pytest.mark.parametrize("kind", WRONG_FILES)
def test_build_names_a_wrong_input(bad, tmp_path, kind):
    clean_error(["build", bad[kind], tmp_path / "out"], bad[kind].name)


@pytest.mark.parametrize("kind", ["missing", "empty", "random", "folder"])
def test_pretrain_flow_names_wrong_images(bad, tmp_path, kind):
    clean_error(["pretrain-flow", bad[kind], tmp_path / "out", "--executor", "local"], bad[kind].name)


@pytest.mark.parametrize("option, value, named", [
    ("--resize", "huge", "huge"), ("--shard-size", "lots", "lots"), ("--flow-param", "tau", "tau"),
    ("--flow-param", "nonsense=1", "nonsense"), ("--step", "0", "step"), ("--bound", "-1", "bound"),
    ("--flow", "magic", "--flow"), ("--actors-per-gpu", "0", "--actors-per-gpu"),
    ("--flow-backend", "opencv --flow raft_small", "opencv"),
])
def test_build_refuses_wrong_values_before_ray(release, tmp_path, option, value, named):
    videos = tmp_path / "videos"
    shutil.copytree(FIXTURE / "videos", videos)
    listing = tmp_path / "list.csv"
    listing.write_text((FIXTURE / "list.csv").read_text().replace("videos/", f"{videos}/"))
    clean_error(["build", listing, tmp_path / "out", option, *value.split(" ")], named)


@pytest.mark.parametrize("kind", WRONG_FILES)
@pytest.mark.parametrize("command", ["evaluate", "features"])
def test_a_wrong_checkpoint_is_named_with_what_was_expected(release, bad, tmp_path, command, kind):
    args = [command, release / "dataset", bad[kind]] + ([tmp_path / "f.parquet"] if command == "features" else [])
    out = clean_error([*args, "--workers", "0", "--device", "cpu"], bad[kind].name)
    assert "checkpoint" in out


@pytest.mark.parametrize("option", ["--weights", "--flow-weights", "--resume"])
@pytest.mark.parametrize("kind", ["missing", "empty", "random", "text", "folder"])
def test_train_names_wrong_weights_and_checkpoints_before_any_work(release, bad, tmp_path, option, kind):
    run = tmp_path / "run"
    clean_error(["train", release / "dataset", "--output", run, option, bad[kind], "--arch", "resnet18",
                 "--streams", "flow", "--clip-len", "4", "--crop-size", "32", "--workers", "0", "--device", "cpu",
                 "--epochs", "1", "--steps-per-epoch", "1", "--no-progress"], bad[kind].name)
    assert not (run / "epoch_000.pt").exists()


@pytest.mark.parametrize("option, value, named", [
    ("--epochs", "0", "epochs"), ("--crop-scales", "big", "big"), ("--strides", "1,x", "1,x"),
    ("--fusion-weights", "a,b", "a,b"), ("--streams", "sound", "sound"), ("--crop-size", "2", "crop_size"),
    ("--arch", "resnet7", "--arch"), ("--eval-split", "nowhere", "nowhere"), ("--lr", "-1", "lr"),
])
def test_train_refuses_wrong_values(release, tmp_path, option, value, named):
    clean_error(["train", release / "dataset", "--output", tmp_path / "run", "--weights", "none", "--workers", "0",
                 "--device", "cpu", option, value], named)


def test_evaluate_names_a_wrong_dataset_for_a_good_checkpoint(release, bad):
    for kind in ("missing", "empty", "folder"):
        clean_error(["evaluate", bad[kind], release / "run" / "last.pt", "--workers", "0", "--device", "cpu"],
                    bad[kind].name)


@pytest.mark.parametrize("kind", ["missing", "empty", "random", "text", "folder"])
def test_flow_check_names_wrong_frame_files(bad, tmp_path, kind):
    clean_error(["flow-check", "--no-builtin", "--flow", "farneback", "--pair", bad[kind], bad[kind],
                 "--gt", bad[kind]], bad[kind].name)


@pytest.mark.parametrize("option, value, named", [
    ("--size", "tiny", "tiny"), ("--flow-param", "=3", "=3"), ("--batch-size", "0", "batch_size"),
    ("--pairs", "0", "pairs"), ("--device", "gpu9", "gpu9"),
])
def test_flow_check_refuses_wrong_values(option, value, named):
    clean_error(["flow-check", "--flow", "farneback", option, value], named)


def test_clips_refuses_a_clip_longer_than_every_video(release, tmp_path):
    out = clean_error(["clips", release / "dataset", tmp_path / "clips", "--clip-len", "500"], "--clip-len", "500")
    assert "longest holds 9" in out
    assert not (tmp_path / "clips").exists()  # refused before anything was written


@pytest.mark.parametrize("option, value, named", [
    ("--strides", "1,x", "1,x"), ("--shard-size", "1", "shard_bytes"), ("--per-video", "0", "per_video"),
    ("--clip-len", "-1", "clip_len"), ("--rgb-frames", "0", "rgb_frames"),
])
def test_clips_refuses_wrong_values(release, tmp_path, option, value, named):
    clean_error(["clips", release / "dataset", tmp_path / "clips", option, value], named)


def test_an_output_file_where_a_folder_belongs(release, bad, tmp_path):
    for command in (["clips", "--clip-len", "4"], ["export"]):
        clean_error([*command, release / "dataset", bad["text"]], bad["text"].name)
    clean_error(["inspect", release / "dataset", "-o", bad["folder"]], bad["folder"].name)
