"""Version names, pruning and lineage: tags usable wherever an id is, space given back exactly,
kept versions verifying byte for byte, safety beside builds, readers and a killed prune."""
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from jobs.cli import cli
from jobs.commands.build import build as build_command
from jobs.commands.build import make_build_config, resolve_auto_device
from jobs.commands.versions import (
    log,
    parse_duration,
    print_tree,
    prune,
    tag,
    tree_lines,
)
from pipeline import open_dataset
from pipeline.build import lineage, manifest, tags
from pipeline.build import prune as pruning
from pipeline.build import versions as version
from pipeline.build.run import build_dataset
from pipeline.verify import verify
from tests.helpers import write_list
from tests.test_s3 import s3  # noqa: F401  (the loopback S3 server fixture)

REPO = Path(__file__).resolve().parents[1]
ARGS = ("--flow", "dis", "--resize", "none", "--shard-samples", "3", "--executor", "local", "--no-progress")
NOW = ("--min-age", "0")  # the versions here are seconds old

LAUNCHER = r'''
import os, sys, time
from pipeline import storage

original, count = storage.remove, [0]


def remove(loc, **kwargs):
    result = original(loc, **kwargs)
    if "/shards/" in str(loc):
        count[0] += 1
        if count[0] == 1:  # one tar deleted, the others not yet
            open(os.environ["FS_MARKER"], "w").close()
            time.sleep(600)
    return result


storage.remove = remove
from jobs.commands.versions import prune
prune.main(args=sys.argv[1:], prog_name="flowshard prune")
'''


def run(command, *args, ok=True):
    result = CliRunner().invoke(command, [str(a) for a in args])
    if ok:
        assert result.exit_code == 0, result.output + repr(result.exception)
    return result


def build(listing, out, *extra):
    return run(cli, "build", listing, out, *ARGS, *extra).output.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def lineage4(motion_videos, tmp_path_factory):
    """Four versions in one OUTPUT: v1 (7 videos), v2 (a video added), v3 (one relabelled),
    v4 (another estimator); returns (folder, [v1..v4], {name: list file})."""
    root = tmp_path_factory.mktemp("prune")
    (root / "videos").symlink_to(motion_videos, target_is_directory=True)
    rows = [{"path": f"videos/{p.parent.name}/{p.name}", "label": p.parent.name, "split": "train"}
            for p in sorted(motion_videos.glob("*/*.mp4"))]
    relabelled = [dict(r, label="left") if Path(r["path"]).stem == "v_up_g00" else r for r in rows]
    lists = {"v1": write_list(root / "v1.csv", rows[:7]), "v2": write_list(root / "v2.csv", rows),
             "v3": write_list(root / "v3.csv", relabelled)}
    out = root / "out"
    vids = [build(lists["v1"], out), build(lists["v2"], out), build(lists["v3"], out),
            build(lists["v3"], out, "--flow", "farneback")]
    assert len(set(vids)) == 4
    return out, vids, lists


@pytest.fixture
def ds(lineage4, tmp_path):
    """A fresh copy of the four-version OUTPUT (the list files still point at the videos)."""
    out, vids, lists = lineage4
    copy = tmp_path / "out"
    shutil.copytree(out, copy, symlinks=True)
    return copy, vids, lists


def shards_of(out, vid):
    return {r["name"]: r["bytes"] for r in manifest.read_rows(out / "versions" / vid / manifest.SHARDS)}


def only_in(out, gone, kept):
    """Bytes of the tars the catalog lists for `gone` and for none of `kept`."""
    keep = set().union(*(shards_of(out, v) for v in kept))
    listed = {n: b for v in gone for n, b in shards_of(out, v).items()}  # a tar two of them share counts once
    return sum(b for n, b in listed.items() if n not in keep)


def shard_bytes(out):
    return sum(p.stat().st_size for p in (out / "shards").glob("*.tar"))


def files(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in Path(root).rglob("*") if p.is_file()}


def verifies(out, vid):
    """Every shard's size and sha256 as the catalog recorded them, every sample decoded."""
    report = verify(f"{out}@{vid}")
    assert report.ok, report.problems
    return True


# --- names ------------------------------------------------------------------------------------

def test_tags_name_versions_wherever_an_id_is_taken(ds):
    out, (v1, v2, v3, v4), _ = ds
    assert run(tag, out, v2[:8], "paper").output.strip() == f"paper -> {v2}"
    assert open_dataset(f"{out}@paper").version == v2
    assert verify(f"{out}@paper").ok
    assert version.diff_versions(out, "paper", v3)["relabelled"][0]["to"] == "left"
    assert [r["names"] for r in version.list_versions(out)] == [[], ["paper"], [], []]
    # Names that could be read as an id prefix, or that break OUTPUT@NAME, are refused.
    for bad in ("cafe12", "abc", "DEADBEEF", "latest", "a/b", "x@y", "-x", ""):
        result = run(tag, out, v2, bad, ok=False)
        assert result.exit_code != 0 and "tag" in result.output, (bad, result.output)
    # Moved only with --force; deleted with --delete.
    result = run(tag, out, v3, "paper", ok=False)
    assert result.exit_code != 0 and "--force" in result.output and tags.lookup(out, "paper") == v2
    assert f"moved: {v2} -> {v3}" in run(tag, out, v3, "paper", "--force").output
    run(tag, out, "latest", "current")
    assert tags.lookup(out, "current") == v4
    assert v3 in run(tag, "--delete", out, "paper").output
    with pytest.raises(ValueError, match="no version 'paper', nor a tag"):
        open_dataset(f"{out}@paper")
    assert run(tag, "--delete", out, "paper", ok=False).exit_code != 0
    assert tags.opened_name(f"{out}@current") == "current" and tags.opened_name(f"{out}@{v1[:8]}") == ""
    assert tags.opened_name(str(out)) == ""


def test_a_checkpoint_records_the_name_its_version_was_opened_by():
    import torch

    from training import checkpoint

    model = torch.nn.Linear(2, 2)
    ckpt = checkpoint.make_checkpoint(model=model, optimizer=None, scheduler=None, scaler=None, step=0, epoch=0,
                                      config={}, dataset_version="0123456789abcdef",
                                      dataset_name=tags.opened_name("out@paper"))
    assert ckpt["dataset_version"] == "0123456789abcdef" and ckpt["dataset_name"] == "paper"


# --- prune ------------------------------------------------------------------------------------

def test_prune_a_version_gives_back_exactly_its_unshared_bytes(ds):
    out, (v1, v2, v3, v4), _ = ds
    expected = only_in(out, [v3], [v1, v2, v4])  # the tar of the relabelled video's unit
    assert expected > 0 and pruning.unshared_bytes(out)[v3] == expected and pruning.unshared_bytes(out)[v2] == 0
    before = shard_bytes(out)
    result = run(prune, out, "--version", v3[:7], *NOW, "--json")
    report = json.loads(result.output)
    assert report["plan"]["versions"] == [v3] and report["shard_bytes"] == expected
    assert before - shard_bytes(out) == expected and report["freed"] == report["bytes"] >= expected
    assert not (out / "versions" / v3).exists()
    assert [r["version"] for r in version.read_catalog(out)] == [v1, v2, v4]
    assert all(verifies(out, v) for v in (v1, v2, v4)) and verify(out).ok and not verify(out).warnings
    # A reader asking for it learns why it is gone.
    with pytest.raises(tags.VersionPruned, match=f"version {v3} was pruned at 20"):
        open_dataset(f"{out}@{v3}")
    assert "was pruned at" in verify(f"{out}@{v3[:6]}").problems[0]
    # v2 shared its added video's tar with v3 only: now it alone holds it.
    expected = only_in(out, [v2], [v1, v4])
    assert expected > 0 and pruning.unshared_bytes(out)[v2] == expected
    result = pruning.prune(out, pruning.PruneOptions(versions=(v2,), min_age_s=0))
    assert result.plan.shard_bytes == expected and result.freed == result.plan.bytes
    assert verifies(out, v1) and verifies(out, v4)


def test_prune_refuses_the_latest_and_tagged_versions_without_force(ds):
    out, (v1, _, v3, v4), _ = ds
    run(tag, out, v1, "paper")
    for target in (v1, "paper", v4):
        result = run(prune, out, "--version", target, *NOW, ok=False)
        assert result.exit_code != 0 and "--force" in result.output, result.output
    assert len(version.read_catalog(out)) == 4
    # --force removes the latest: the newest remaining version becomes the latest.
    text = run(prune, out, "--version", v4, "--force", *NOW).output
    assert f"the latest version is {v3}" in text
    assert open_dataset(out).version == v3 and verifies(out, v3)
    assert (out / "dataset.json").read_bytes() == (out / "versions" / v3 / "dataset.json").read_bytes()
    # A tagged one with --force: its tag goes with it, and its name still explains the error.
    run(prune, out, "--version", "paper", "--force", *NOW)
    assert tags.read_tags(out) == {}
    with pytest.raises(tags.VersionPruned, match=rf"{v1} \(paper\) was pruned"):
        open_dataset(f"{out}@paper")


def test_keep_last_with_keep_tagged(ds):
    out, (v1, _, v3, v4), _ = ds
    run(tag, out, v1, "paper")
    text = run(prune, out, "--keep-last", "2", "--keep-tagged", *NOW).output
    assert f"kept {v1}: tagged paper" in text
    assert [r["version"] for r in version.read_catalog(out)] == [v1, v3, v4]
    assert all(verifies(out, v) for v in (v1, v3, v4))
    # Without --keep-tagged a rule that selects a tagged version is refused.
    result = run(prune, out, "--keep-last", "1", *NOW, ok=False)
    assert result.exit_code != 0 and "tagged paper" in result.output


def test_older_than_and_min_age(ds):
    out, (v1, v2, v3, v4), _ = ds
    ten_days = time.time() - 10 * 86400
    for vid in (v1, v2):
        os.utime(out / "versions" / vid / "dataset.json", (ten_days, ten_days))
    expected = only_in(out, [v1, v2], [v3, v4])
    before = shard_bytes(out)
    text = run(prune, out, "--older-than", "5").output  # the default --min-age (1 day) passes them
    assert text.splitlines()[:2] == [f"- {v1}", f"- {v2}"]
    assert before - shard_bytes(out) == expected
    assert [r["version"] for r in version.read_catalog(out)] == [v3, v4]
    assert verifies(out, v3) and verifies(out, v4)
    # Young versions are never removed, even when named.
    text = run(prune, out, "--version", v3).output
    assert f"kept {v3}: younger than --min-age" in text and "nothing to prune" in text
    assert verifies(out, v3)
    assert parse_duration("12h") == 43200 and parse_duration("2") == 172800 and parse_duration("0") == 0


def test_dry_run_deletes_nothing(ds):
    out, (v1, v2, v3, v4), _ = ds
    before = files(out)
    text = run(prune, out, "--keep-last", "1", "--dry-run", *NOW).output
    assert [line for line in text.splitlines() if line.startswith("- ")] == [f"- {v}" for v in (v1, v2, v3)]
    expected = only_in(out, [v1, v2, v3], [v4])
    assert "would give back" in text
    plan = pruning.prune(out, pruning.PruneOptions(keep_last=1, min_age_s=0, dry_run=True)).plan
    assert plan.shard_bytes == expected
    assert files(out) == before
    # The real prune then gives back what the dry run said.
    result = pruning.prune(out, pruning.PruneOptions(keep_last=1, min_age_s=0))
    assert result.freed == plan.bytes and verifies(out, v4)
    assert sorted(p.name for p in (out / "shards").glob("*.tar")) == sorted(shards_of(out, v4))


def test_an_unfinished_builds_files_are_kept_and_resume(ds, tmp_path):
    out, (v1, v2, v3, v4), lists = ds
    # The state of a build killed before its commit: unit records and tars, no version.
    saved = {n: (out / n).read_bytes() for n in ("dataset.json", "manifest.parquet", "shards.parquet",
                                                  "versions.parquet")}
    v5 = build(lists["v3"], out, "--bound", "10")
    shutil.rmtree(out / "versions" / v5)
    for n, data in saved.items():
        (out / n).write_bytes(data)
    unfinished = {p.name for p in (out / "shards").glob("*.tar")} - set().union(*(shards_of(out, v) for v in
                                                                                 (v1, v2, v3, v4)))
    assert unfinished
    run(prune, out, "--version", v1, "--version", v2, "--version", v3, *NOW)
    assert unfinished <= {p.name for p in (out / "shards").glob("*.tar")}
    output = run(cli, "build", lists["v3"], out, *ARGS, "--bound", "10").output
    assert output.strip().splitlines()[-1] == v5 and "0 video(s) computed" in output
    assert verifies(out, v5) and verifies(out, v4)


# --- safety: a killed prune, a waiting build --------------------------------------------------

def start_prune(out, marker, *args):
    env = dict(os.environ, PYTHONPATH=str(REPO), FS_MARKER=str(marker))
    with open(marker.with_suffix(".log"), "w") as log_file:  # the child keeps its own copy of the handle
        proc = subprocess.Popen([sys.executable, "-c", LAUNCHER, str(out), *args], cwd=REPO, env=env,
                                stdout=log_file, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while not marker.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            pytest.fail(f"the prune did not reach its pause: {marker.with_suffix('.log').read_text()}")
        time.sleep(0.05)
    return proc


def kill(proc):
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)


def test_a_prune_killed_half_way_is_finished_by_the_next(ds, tmp_path):
    out, (v1, v2, v3, v4), _ = ds
    expected = only_in(out, [v1, v2, v3], [v4])
    before = shard_bytes(out)
    proc = start_prune(out, tmp_path / "paused", "--keep-last", "1", *NOW)
    kill(proc)
    # Half way: the kept version verifies, the pruned ones read as pruned, the journal waits.
    assert (out / ".flowshard" / pruning.JOURNAL).exists()
    assert verifies(out, v4) and verify(out).ok
    assert [r["version"] for r in version.read_catalog(out)] == [v4]
    with pytest.raises(tags.VersionPruned):
        open_dataset(f"{out}@{v2}")
    assert 0 < before - shard_bytes(out) < expected
    # The next prune (selecting nothing more) finishes the job.
    text = run(prune, out, "--keep-last", "1", *NOW).output
    assert "an interrupted prune was finished first" in text
    assert before - shard_bytes(out) == expected and not (out / ".flowshard" / pruning.JOURNAL).exists()
    assert sorted(p.name for p in (out / "shards").glob("*.tar")) == sorted(shards_of(out, v4))
    assert not [p for p in (out / ".flowshard" / "units").glob("*.json")
                if p.stem not in {r["stem"] for r in manifest.read_rows(out / "versions" / v4 / "units.parquet")}]
    assert verifies(out, v4)


def test_a_build_waits_for_a_prune_and_never_reuses_what_it_deleted(ds, lineage4, tmp_path):
    out, (v1, v2, _, v4), lists = ds
    reference = {n: (lineage4[0] / "shards" / n).read_bytes() for n in shards_of(lineage4[0], v2)}
    ctx = build_command.make_context("build", [str(lists["v2"]), str(out), *ARGS])
    cfg = make_build_config(resolve_auto_device(ctx.params))
    proc = start_prune(out, tmp_path / "paused", "--keep-last", "1", *NOW)
    summary = {}
    waiting = threading.Thread(target=lambda: summary.update(
        s=build_dataset(str(lists["v2"]), str(out), cfg, progress=False, lock_wait_s=120)))
    waiting.start()
    time.sleep(1.5)
    assert waiting.is_alive() and not summary  # waits on the lock the prune holds
    kill(proc)
    waiting.join(timeout=120)
    s = summary["s"]
    # The build finished the prune first, then rebuilt v2 (same id) computing every video again:
    # nothing was copied from a tar the prune deleted.
    assert s.version == v2 and s.computed == 8 and s.reused == 0
    assert not (out / ".flowshard" / pruning.JOURNAL).exists()
    assert verifies(out, v2) and verifies(out, v4)
    assert {n: (out / "shards" / n).read_bytes() for n in shards_of(out, v2)} == reference
    assert open_dataset(f"{out}@{v2}").version == v2  # rebuilt: readable again
    with pytest.raises(tags.VersionPruned):
        open_dataset(f"{out}@{v1}")


def test_a_reader_of_a_version_pruned_meanwhile_is_told_so(ds):
    out, (v1, v2, v3, _), _ = ds
    reader = open_dataset(f"{out}@{v2}")
    video = next(v.video_id for v in reader.videos() if v.shard not in shards_of(out, v3))  # a tar v3 lacks
    run(prune, out, "--version", v2, "--version", v1, *NOW)
    with pytest.raises(tags.VersionPruned, match=f"{v2} was pruned at"):
        reader.read(video)


# --- lineage ----------------------------------------------------------------------------------

def test_lineage_tree_and_log(ds):
    out, (v1, v2, v3, v4), _ = ds
    run(tag, out, v3, "paper")
    entries = {e["version"]: e for e in lineage.lineage(out)}
    assert entries[v1]["changes"] is None and entries[v1]["parent_state"] == ""
    assert entries[v2]["changes"]["added"] == 1 and entries[v2]["shared_bytes"] == sum(shards_of(out, v1).values())
    assert entries[v3]["changes"]["relabelled"] == 1 and entries[v3]["names"] == ["paper"]
    assert "flow.algorithm" in entries[v4]["changes"]["settings"] and entries[v4]["shared_bytes"] == 0
    lines = tree_lines(list(entries.values()))
    assert lines[0].startswith(f"  {v1}") and "first version" in lines[0]
    assert lines[1].startswith(f"  `- {v2}") and "1 added" in lines[1]
    assert lines[2].startswith(f"     `- {v3}  [paper]") and "1 relabelled" in lines[2]
    assert lines[3].startswith(f"*       `- {v4}") and "settings: flow.algorithm" in lines[3]
    text = run(log, out).output.splitlines()
    assert [line.split()[1] if line.startswith("*") else line.split()[0] for line in text] == [v4, v3, v2, v1]
    assert len(run(log, out, "paper").output.splitlines()) == 3
    # A pruned parent is named as such.
    run(prune, out, "--version", v2, *NOW)
    entries = {e["version"]: e for e in lineage.lineage(out)}
    assert lineage.describe(entries[v3]) == f"parent {v2} was pruned"
    result = CliRunner().invoke(print_tree_command(), [str(out)])
    assert result.exit_code == 0 and v3 in result.output


def print_tree_command():
    import click

    @click.command()
    @click.argument("output")
    def versions_tree(output):
        print_tree(output)
    return versions_tree


# --- object storage ---------------------------------------------------------------------------

@pytest.mark.slow
def test_prune_on_object_storage(s3, lineage4):  # noqa: F811  (s3: the fixture)
    from pipeline import storage

    _, _, lists = lineage4
    out = "s3://flowshard/prune"
    vids = [build(lists["v1"], out), build(lists["v2"], out), build(lists["v3"], out),
            build(lists["v3"], out, "--flow", "farneback")]
    v1, v2, v3, v4 = vids
    run(tag, out, v3, "paper")
    assert open_dataset(f"{out}@paper").version == v3

    def rows(vid):
        path = f"{out}/versions/{vid}/shards.parquet"
        return {r["name"]: r["bytes"] for r in manifest.read_rows(path)}

    def tar_bytes():
        return sum(storage.size(f"{out}/shards/{n}") for n in storage.list_files(f"{out}/shards", suffix=".tar"))

    keep = set(rows(v3)) | set(rows(v4))
    expected = sum(b for n, b in {**rows(v1), **rows(v2)}.items() if n not in keep)
    before_files, before = storage.walk_files(out), tar_bytes()
    text = run(prune, out, "--keep-last", "1", "--keep-tagged", "--dry-run", *NOW).output
    assert "would give back" in text and storage.walk_files(out) == before_files
    result = pruning.prune(out, pruning.PruneOptions(keep_last=1, keep_tagged=True, min_age_s=0))
    assert result.plan.versions == [v1, v2] and result.plan.shard_bytes == expected
    assert before - tar_bytes() == expected
    for vid in (v3, v4):
        assert verify(f"{out}@{vid}").ok
    with pytest.raises(tags.VersionPruned, match=f"{v1} was pruned at"):
        open_dataset(f"{out}@{v1}")
    assert result.note == ""  # this bucket keeps no object versions
    fs, _ = storage.filesystem("s3://versioned")
    fs.mkdir("versioned")
    fs.make_bucket_versioned("versioned")
    assert "lifecycle rules" in pruning.versioning_note("s3://versioned/out")

