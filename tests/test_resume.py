"""Crash safety for real: SIGKILL the build driver or a Ray worker, rerun, compare bytes.

Builds run as subprocesses (`python -m jobs.cli build ...`). To kill the driver at an exact
moment (mid-way through a tar, right after a unit record, before the top-level manifests
are refreshed), a small launcher defined here patches one function in the child to touch a
marker file and wait; the test then kills the child with SIGKILL.
"""
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from jobs.cli import cli
from pipeline import open_dataset
from pipeline.synthetic import motion as synthetic
from pipeline.verify import verify
from tests.helpers import write_list

REPO = Path(__file__).resolve().parents[1]
ARGS = ["--flow", "dis", "--resize", "none", "--shard-samples", "2", "--no-progress"]

LAUNCHER = r'''
import os, runpy, sys, time

hook, marker = os.environ.get("FS_HOOK", ""), os.environ.get("FS_MARKER", "")


def pause():
    open(marker, "w").close()
    time.sleep(600)


if hook == "mid-tar":
    import tarfile
    original, count = tarfile.TarFile.addfile, [0]

    def addfile(self, *args, **kwargs):
        count[0] += 1
        result = original(self, *args, **kwargs)
        if count[0] == 10:  # inside the first sample of the first tar written
            self.fileobj.flush()
            pause()
        return result
    tarfile.TarFile.addfile = addfile
elif hook == "after-record":
    from pipeline.build import resume
    original_save = resume.save_record

    def save_record(*args, **kwargs):
        original_save(*args, **kwargs)
        pause()
    resume.save_record = save_record
elif hook == "mid-publish":
    from pipeline.build import manifest
    original_write = manifest.atomic_write_bytes

    def atomic_write_bytes(path, data):
        if str(path) == os.path.join(os.environ["FS_OUT"], "shards.parquet"):
            pause()  # the new manifest.parquet is already copied, shards.parquet and dataset.json not
        original_write(path, data)
    manifest.atomic_write_bytes = atomic_write_bytes

sys.argv = ["flowshard", *sys.argv[1:]]
runpy.run_module("jobs.cli", run_name="__main__")
'''


def files(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in Path(root).rglob("*")
            if p.is_file() and ".flowshard" not in p.parts}


def build_here(listing, out, *extra):
    result = CliRunner().invoke(cli, ["build", str(listing), str(out), *ARGS, "--executor", "local", *extra])
    assert result.exit_code == 0, result.output + repr(result.exception)
    return result.output.strip().splitlines()[-1]


def child_env(**extra):
    env = dict(os.environ, PYTHONPATH=str(REPO), RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0")
    env.pop("RAY_ADDRESS", None)  # the child starts its own private local Ray
    return {**env, **extra}


def start(cmd, env, log):
    return subprocess.Popen([sys.executable, *cmd], cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)


def wait_for(predicate, proc, timeout=120.0, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        if proc.poll() is not None:
            pytest.fail(f"the build exited ({proc.returncode}) before {what}")
        time.sleep(0.02)
    pytest.fail(f"timed out waiting for {what}")


def kill(proc):
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)


def run_to_end(cmd, env, log_path, timeout=300):
    with open(log_path, "a") as log:
        proc = start(cmd, env, log)
        proc.wait(timeout=timeout)
    out = Path(log_path).read_text()
    assert proc.returncode == 0, out
    return out


@pytest.fixture(scope="module")
def lists(tmp_path_factory):
    """v1.csv (7 videos) and v2.csv (8 videos) of small moving-texture videos."""
    root = tmp_path_factory.mktemp("resume")
    videos = synthetic.make_motion_dataset(root / "videos", per_class=2, num_frames=12, size=(64, 48))
    rows = [{"path": str(p.relative_to(root)), "label": p.parent.name, "split": "train"}
            for p in sorted(videos.glob("*/*.mp4"))]
    return write_list(root / "v1.csv", rows[:7]), write_list(root / "v2.csv", rows)


@pytest.fixture(scope="module")
def reference(lists, tmp_path_factory):
    """An uninterrupted build of v1 then v2, and a copy of the folder holding v1 only."""
    ref, with_v1 = tmp_path_factory.mktemp("ref") / "out", tmp_path_factory.mktemp("v1") / "out"
    v1 = build_here(lists[0], with_v1)
    shutil.copytree(with_v1, ref)
    v2 = build_here(lists[1], ref)
    return ref, with_v1, v1, v2


@pytest.mark.parametrize("hook", ["mid-tar", "after-record", "mid-publish"])
def test_killed_driver_resumes_to_the_same_bytes_and_keeps_the_previous_version(lists, reference, tmp_path, hook):
    ref, with_v1, v1, v2 = reference
    out = tmp_path / "out"
    shutil.copytree(with_v1, out)
    cmd = ["-c", LAUNCHER, "build", str(lists[1]), str(out), *ARGS, "--executor", "local"]
    marker = tmp_path / "paused"
    with open(tmp_path / "log.txt", "w") as log:
        proc = start(cmd, child_env(FS_HOOK=hook, FS_MARKER=str(marker), FS_OUT=str(out)), log)
        wait_for(marker.exists, proc, what=f"the {hook} moment")
        kill(proc)
    if hook == "mid-tar":
        assert list((out / "shards").glob(".*.tmp-*")), "the kill should leave a partial temporary tar"
    # While the build is dead, the previous version is intact and is still the latest.
    ds = open_dataset(out)
    assert ds.version == v1 and ds.read(ds.videos()[0].video_id).frames.shape[0] == 12
    assert verify(out).ok
    text = run_to_end(cmd, child_env(), tmp_path / "log.txt")
    assert text.strip().splitlines()[-1] == v2
    assert not list(out.rglob(".*.tmp-*"))
    assert files(out) == files(ref)
    assert verify(out).ok and verify(f"{out}@{v1}").ok


def _descendants(pid: int) -> set[int]:
    parents = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                parents[int(d.name)] = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    found, frontier = set(), {pid}
    while frontier:
        frontier = {p for p, pp in parents.items() if pp in frontier} - found
        found |= frontier
    return found


def _title(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def _addr(hex_addr: str) -> str:
    ip_hex = hex_addr.split(":")[0]
    raw = bytes.fromhex(ip_hex)
    # /proc/net prints each 32-bit word of the address in host (little-endian) order.
    raw = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
    return socket.inet_ntop(socket.AF_INET if len(raw) == 4 else socket.AF_INET6, raw)


def listening_addresses(pids: set[int]) -> set[tuple[int, str]]:
    """(pid, address) of every listening TCP or bound UDP socket the processes hold."""
    inodes = {}
    for pid in pids:
        try:
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                target = os.readlink(fd)
                if target.startswith("socket:["):
                    inodes[target[8:-1]] = pid
        except OSError:
            continue  # the process ended meanwhile
    found = set()
    for table, listening in (("tcp", "0A"), ("tcp6", "0A"), ("udp", "07"), ("udp6", "07")):
        for line in Path(f"/proc/net/{table}").read_text().splitlines()[1:]:
            cols = line.split()
            if cols[3] == listening and cols[9] in inodes:
                found.add((inodes[cols[9]], _addr(cols[1])))
    return found


def is_loopback(address: str) -> bool:
    return address.startswith("127.") or address in ("::1",) or address.startswith("::ffff:127.")


def test_ray_build_survives_a_killed_flow_worker_and_listens_on_loopback_only(tmp_path):
    videos = tmp_path / "videos"
    for i, motion in enumerate(("left", "right", "up")):
        (videos / motion).mkdir(parents=True)
        synthetic.write_video(videos / motion / f"v{i}.mp4", synthetic.moving_frames(motion, 24, 72, 96, seed=i))
    out = tmp_path / "out"
    cmd = ["-m", "jobs.cli", "build", str(videos), str(out), "--flow", "tvl1", "--resize", "none",
           "--chunk-frames", "8", "--num-cpus", "2", "--no-progress"]
    with open(tmp_path / "log.txt", "w") as log:
        proc = start(cmd, child_env(), log)
        flow_workers = []

        def flow_running():
            flow_workers[:] = [p for p in _descendants(proc.pid) if _title(p).startswith(("ray::_flow", "ray::_video"))]
            return bool(flow_workers)
        wait_for(flow_running, proc, timeout=180, what="a flow task")
        os.kill(flow_workers[0], signal.SIGKILL)  # a worker process in the middle of a flow task
        sockets = listening_addresses(_descendants(proc.pid) | {proc.pid})
        proc.wait(timeout=300)
    text = (tmp_path / "log.txt").read_text()
    assert proc.returncode == 0, text
    assert sockets and all(is_loopback(a) for _, a in sockets), sockets
    assert "3 of 3 videos ok, 0 error(s), 72 frames, 69 flow fields" in text
    ds = open_dataset(out)
    assert [v.flow_fields for v in ds.videos()] == [23, 23, 23] and verify(out).ok


def test_driver_killed_during_a_ray_build_resumes_only_unfinished_units(lists, reference, tmp_path):
    ref, with_v1, v1, v2 = reference
    out = tmp_path / "out"
    shutil.copytree(with_v1, out)
    before = {p.name for p in (out / ".flowshard" / "units").glob("*.json")}
    cmd = ["-m", "jobs.cli", "build", str(lists[1]), str(out), *ARGS, "--num-cpus", "2", "--shard-samples", "1"]

    def new_records():
        return {p.name for p in (out / ".flowshard" / "units").glob("*.json")} - before
    with open(tmp_path / "log.txt", "w") as log:
        proc = start(cmd, child_env(), log)
        wait_for(lambda: new_records(), proc, timeout=180, what="the first new unit record")
        kill(proc)
    done_before = new_records()
    text = run_to_end(cmd, child_env(), tmp_path / "log.txt")
    summary = [ln for ln in text.splitlines() if ln.startswith("version ")][-1]
    skipped = int(re.search(r"(\d+) unit\(s\) already done", summary).group(1))
    computed, copied = map(int, re.search(r"(\d+) video\(s\) computed, (\d+) copied", summary).groups())
    assert skipped == len(done_before) >= 1 and computed + copied == 8 - skipped
    assert len(open_dataset(out).shards()) == 8 and verify(out).ok
    clean = tmp_path / "clean"
    shutil.copytree(with_v1, clean)
    build_here(lists[1], clean, "--shard-samples", "1")
    assert files(out) == files(clean)
