"""Broken and hostile input: every file gives a correct sample or an error row with a clear reason,
the build finishes, and nothing escapes its folder, reaches a shell or unpickles."""
import errno
import io
import json
import os
import pickle
import re
import subprocess
import tarfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from jobs.cli import cli
from pipeline import encode, open_dataset, shard
from pipeline.synthetic import motion
from pipeline.report import classify
from pipeline.verify import verify

REPO = Path(__file__).resolve().parents[1]
ARGS = ("--flow", "dis", "--resize", "none", "--shard-samples", "4", "--no-progress")

# File names that would do harm if any shell ever saw them.
HOSTILE_NAMES = ["with space.mp4", "it's \"quoted\".mp4", "semi;colon;touch PWNED1;.mp4", "v.1.2.3.mp4",
                 "vidéo-ñandú.mp4", "-leading-dash.mp4", "$(touch PWNED2).mp4", "`touch PWNED3`.mp4"]

# name -> ("ok", None) or ("error", report kind, words the reason must contain)
EXPECTED = {
    "zero.mp4": ("error", "empty file", "0 bytes"),
    "random.mp4": ("error", "not a media file", "not a media file"),
    "audio_only.mp4": ("error", "no video stream", "no video stream"),
    "one_frame.mp4": ("error", "too short", "1 frame"),
    "still_image.avi": ("error", "too short", "1 frame"),
    "huge_header.avi": ("error", "resolution too large", "30000x30000"),
    "big_header.mkv": ("error", "resolution too large", "16000x16000"),
    "unknown_codec.avi": ("error", "unsupported codec", "unsupported codec"),
    "fifo.mp4": ("error", "not a regular file", "not a regular file"),
    # Playlists that name other files and URLs: refused, nothing fetched (see `http_server`).
    "hls_playlist.mp4": ("error", "not a media file", "not a media file"),
    "concat_list.mp4": ("error", "container not allowed", "container not allowed"),
    "device_link.mp4": ("error", "not a regular file", "not a regular file"),
    # Cut at 60 % of its bytes: fewer frames than its header declares (--min-coverage 0.9).
    "truncated.mkv": ("error", "cut short", "of 30 declared frames"),
    "vfr.mkv": ("ok",),
    "odd_size.mkv": ("ok",),
    "rotated.mp4": ("ok",),
    "audio_first.mp4": ("ok",),
}
VFR_TIMES = [0.0, 0.04, 0.1, 0.13, 0.2, 0.3, 0.31, 0.4]


def frames(n=12, h=48, w=64, seed=0):
    return motion.moving_frames("left", n, h, w, seed=seed)


@pytest.fixture(scope="module")
def http_server():
    """A web server on 127.0.0.1 that counts the requests it gets: hostile playlists point here."""
    hits = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - the http.server API
            hits.append(self.path)
            self.send_response(404)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", hits
    server.shutdown()
    server.server_close()


def hls_playlist(*segments: str) -> bytes:
    body = "".join(f"#EXTINF:10.0,\n{s}\n" for s in segments)
    return ("#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-TARGETDURATION:10\n#EXT-X-MEDIA-SEQUENCE:0\n"
            f"{body}#EXT-X-ENDLIST\n").encode()


def concat_list(*files: str) -> bytes:
    return ("ffconcat version 1.0\n" + "".join(f"file {f}\n" for f in files)).encode()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, http_server):
    """INPUT/broken: one file of each broken kind; INPUT/names: good videos with hostile names."""
    root = tmp_path_factory.mktemp("hostile") / "input"
    bad, names = root / "broken", root / "names"
    bad.mkdir(parents=True)
    names.mkdir()
    (bad / "zero.mp4").write_bytes(b"")
    (bad / "random.mp4").write_bytes(np.random.default_rng(0).bytes(20000))
    motion.write_audio_only(bad / "audio_only.mp4")
    motion.write_video(bad / "one_frame.mp4", frames(1))
    motion.write_image(bad / "still_image.avi")
    motion.write_declared_size(bad / "huge_header.avi", 30000, 30000)
    motion.write_declared_size(bad / "big_header.mkv", 16000, 16000)
    motion.write_unknown_codec(bad / "unknown_codec.avi", frames(8))
    os.mkfifo(bad / "fifo.mp4")
    (bad / "hls_playlist.mp4").write_bytes(hls_playlist("/etc/passwd", f"{http_server[0]}/x.ts"))
    (bad / "concat_list.mp4").write_bytes(concat_list("/etc/passwd", f"{http_server[0]}/y.mp4"))
    (bad / "device_link.mp4").symlink_to("/dev/zero")
    whole = motion.write_video(root / "whole.mkv", frames(30), extra_args=("-g", "4"))
    motion.write_truncated(bad / "truncated.mkv", whole, 0.6)
    whole.unlink()
    motion.write_vfr_video(bad / "vfr.mkv", frames(8), VFR_TIMES)
    motion.write_video(bad / "odd_size.mkv", frames(8, 47, 63), codec="ffv1", pix_fmt="bgr0")
    base = motion.write_video(root / "base.mp4", frames(8))
    motion.write_rotated(bad / "rotated.mp4", base, 90)
    motion.write_audio_first(bad / "audio_first.mp4", base)
    base.unlink()
    for i, name in enumerate(HOSTILE_NAMES):
        motion.write_video(names / name, frames(6, seed=i))
    return root


@pytest.fixture(scope="module")
def built(corpus, tmp_path_factory, ray_local):
    out = tmp_path_factory.mktemp("hostile_out") / "ds"
    result = CliRunner().invoke(cli, ["build", str(corpus), str(out), *ARGS])
    assert result.exit_code == 0, result.output + repr(result.exception)
    return out, result.output


def test_every_broken_file_gives_a_sample_or_a_clear_reason(built, http_server):
    out, text = built
    assert http_server[1] == []  # no playlist made a worker fetch anything
    n_ok = sum(e[0] == "ok" for e in EXPECTED.values()) + len(HOSTILE_NAMES)
    assert f"{n_ok} of {len(EXPECTED) + len(HOSTILE_NAMES)} videos ok" in text
    ds = open_dataset(out)
    rows = {Path(v.path).name: v for v in ds.videos(include_errors=True)}
    assert set(rows) == set(EXPECTED) | set(HOSTILE_NAMES)
    for name, expected in EXPECTED.items():
        row = rows[name]
        if expected[0] == "ok":
            assert row.status == "ok", (name, row.error)
            continue
        _, kind, words = expected
        assert row.status == "error" and words in row.error and name in row.error, (name, row.error)
        assert classify(row.error) == kind, (name, row.error)
    assert verify(out).ok


def test_odd_rotated_and_vfr_videos_are_stored_correctly(built):
    ds = open_dataset(built[0])
    by_name = {Path(v.path).name: v.video_id for v in ds.videos()}
    odd = ds.read(by_name["odd_size.mkv"])
    assert odd.frames.shape[1:3] == (48, 64) and odd.meta["source_size"] == [63, 47]
    rotated = ds.read(by_name["rotated.mp4"])
    assert rotated.frames.shape[1:3] == (64, 48) and rotated.meta["source_size"] == [48, 64]
    vfr = ds.read(by_name["vfr.mkv"])
    assert [f["pts"] for f in vfr.meta["frames"]] == pytest.approx(VFR_TIMES, abs=1e-3)
    assert len(ds.read(by_name["audio_first.mp4"]).frames) == 8


def test_hostile_names_build_without_reaching_a_shell(built, corpus):
    out, _ = built
    ds = open_dataset(out)
    names = {Path(v.path).name: v for v in ds.videos() if v.label == "names"}
    assert set(names) == set(HOSTILE_NAMES)
    assert all(re.fullmatch(r"[A-Za-z0-9_-]+", v.video_id) and not v.video_id.startswith("-") for v in names.values())
    assert len({v.video_id for v in names.values()}) == len(HOSTILE_NAMES)
    for where in (REPO, corpus, corpus / "names", out, Path.cwd()):
        assert not [p for p in where.glob("PWNED*")], where
    offenders = [f"{p.relative_to(REPO)}" for folder in ("pipeline", "jobs") for p in (REPO / folder).rglob("*.py")
                 if re.search(r"shell\s*=\s*True|os\.system\(|os\.popen\(", p.read_text())]
    assert not offenders


def test_report_groups_failures_by_reason(built):
    out, _ = built
    table = CliRunner().invoke(cli, ["report", str(out)])
    assert table.exit_code == 0, table.output
    lines = table.output.splitlines()
    assert "13 of 25 videos failed" in lines[0] and lines[1].split()[:2] == ["REASON", "COUNT"]
    assert re.search(r"^not a regular file\s+2\s", table.output, re.M)
    assert re.search(r"^resolution too large\s+2\s", table.output, re.M)
    data = json.loads(CliRunner().invoke(cli, ["report", str(out), "--json"]).output)
    counts = {g["reason"]: g["count"] for g in data["failures"]}
    assert counts == {"too short": 2, "resolution too large": 2, "not a regular file": 2, "empty file": 1,
                      "not a media file": 2, "no video stream": 1, "unsupported codec": 1,
                      "container not allowed": 1, "cut short": 1}
    fifo = next(v for g in data["failures"] for v in g["videos"] if v["path"].endswith("fifo.mp4"))
    assert fifo["error"] == "not a regular file"
    every = CliRunner().invoke(cli, ["report", str(out), "--all"]).output
    assert all(name in every for name, e in EXPECTED.items() if e[0] == "error")


def _listing(root: Path) -> set[str]:
    return {str(p) for p in root.rglob("*")}


def test_extracting_shards_never_writes_outside_the_target(built, tmp_path):
    out, _ = built
    before = _listing(tmp_path)
    for s in open_dataset(out).shards():
        with tarfile.open(s.path) as tar:
            for m in tar.getmembers():
                assert "/" not in m.name and ".." not in m.name.split(".")[0] and m.isfile(), m.name
                assert re.fullmatch(r"[A-Za-z0-9_-]+", m.name.split(".")[0]), m.name
            tar.extractall(tmp_path / "py", filter="data")
        (tmp_path / "gnu").mkdir(exist_ok=True)
        subprocess.run(["tar", "-xf", s.path, "-C", str(tmp_path / "gnu")], check=True)
    after = _listing(tmp_path) - before
    assert after and all(p.startswith((str(tmp_path / "py"), str(tmp_path / "gnu"))) for p in after)
    assert sorted(os.listdir(tmp_path / "py")) == sorted(os.listdir(tmp_path / "gnu"))


class _Boom:
    """Unpickling this runs a command: reading samples must never unpickle anything."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def test_reading_samples_never_unpickles(tmp_path):
    marker = tmp_path / "unpickled"
    meta = {"schema_version": encode.SCHEMA_VERSION, "video_id": "evil", "size": [64, 48], "part": 0,
            "frames": [{"index": 0, "pts": 0.0}], "flow_fields": [], "flow": {"bound": 20.0}}
    sample = encode.to_sample("evil", meta, [encode.encode_rgb(next(iter(frames(1))))], [])
    sample["pyd"] = pickle.dumps(_Boom(marker))
    sample["pickle"] = sample["pyd"]
    shard.write_shard([sample], tmp_path / "evil.tar")
    (read,) = list(shard.iter_shard(tmp_path / "evil.tar"))
    decoded = encode.from_sample(read, "evil")
    assert decoded.frames.shape == (1, 48, 64, 3) and isinstance(read["pyd"], bytes)
    assert not marker.exists()


class _FullDisk(io.FileIO):
    """A file on a disk that fills up after 20 kB."""

    def write(self, data):
        if self.tell() + len(data) > 20_000:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return super().write(data)


def test_a_full_disk_fails_clearly_and_keeps_the_previous_version(motion_videos, tmp_path, monkeypatch):
    out = tmp_path / "ds"
    one = tmp_path / "in"
    (one / "left").mkdir(parents=True)
    src = sorted(motion_videos.glob("*/*.mp4"))
    for p in src[:3]:
        (one / "left" / p.name).symlink_to(p)
    first = CliRunner().invoke(cli, ["build", str(one), str(out), *ARGS, "--executor", "local"])
    assert first.exit_code == 0, first.output
    v1 = first.output.strip().splitlines()[-1]
    (one / "left" / src[3].name).symlink_to(src[3])
    monkeypatch.setattr(shard, "open", lambda path, mode="r": _FullDisk(path, mode.replace("b", "")), raising=False)
    failed = CliRunner().invoke(cli, ["build", str(one), str(out), *ARGS, "--executor", "local"])
    assert failed.exit_code != 0
    assert "No space left on device" in failed.output and str(out / "shards") in failed.output
    assert not list(out.rglob(".*.tmp-*"))  # no partial shard is visible, or left behind
    assert open_dataset(out).version == v1 and verify(out).ok
    monkeypatch.undo()
    again = CliRunner().invoke(cli, ["build", str(one), str(out), *ARGS, "--executor", "local"])
    assert again.exit_code == 0, again.output
    assert open_dataset(out).version != v1 and verify(out).ok and verify(f"{out}@{v1}").ok


@pytest.mark.parametrize("where", ["under_a_file", "proc"])
def test_an_unwritable_output_fails_with_a_clear_error(motion_videos, tmp_path, where):
    if where == "proc":
        out = Path("/proc/flowshard-test-output")
    else:
        (tmp_path / "a_file").write_text("not a folder")
        out = tmp_path / "a_file" / "ds"
    result = CliRunner().invoke(cli, ["build", str(motion_videos), str(out), *ARGS, "--executor", "local"])
    assert result.exit_code != 0
    assert f"{out}: cannot create the output folder" in result.output


def test_max_pixels_refuses_large_frames_before_decoding(motion_videos, tmp_path):
    result = CliRunner().invoke(cli, ["build", str(motion_videos), str(tmp_path / "ds"), *ARGS, "--executor",
                                      "local", "--max-pixels", "3000"])
    assert result.exit_code == 0, result.output
    assert "0 of 8 videos ok, 8 error(s)" in result.output
    errors = open_dataset(tmp_path / "ds").errors()
    assert all("declared resolution 64x48 (3072 px) exceeds the limit of 3000 px" in e.error for e in errors)


def test_a_playlist_cannot_pull_other_local_files_or_urls_into_a_dataset(tmp_path, http_server):
    """An HLS playlist whose segments are a video outside INPUT and a URL, and a concat list
    naming /etc/passwd and a URL (listed by name, as a CSV list may): ffmpeg opens local files
    and video containers only, so both are error rows and nothing is fetched or copied."""
    url, hits = http_server
    before = len(hits)
    (tmp_path / "elsewhere").mkdir()
    private = motion.write_video(tmp_path / "elsewhere" / "private.ts", frames(12), extra_args=("-f", "mpegts"))
    inp = tmp_path / "input"
    inp.mkdir()
    (inp / "leak.m3u8").write_bytes(hls_playlist(str(private), f"{url}/segment.ts"))
    (inp / "leak.ffconcat").write_bytes(concat_list("/etc/passwd", f"{url}/clip.mp4"))
    motion.write_video(inp / "fine.mp4", frames(6))
    listing = tmp_path / "list.csv"
    listing.write_text(f"path,label\n{inp}/leak.m3u8,a\n{inp}/leak.ffconcat,a\n{inp}/fine.mp4,b\n")
    result = CliRunner().invoke(cli, ["build", str(listing), str(tmp_path / "ds"), *ARGS, "--executor", "local"])
    assert result.exit_code == 0, result.output + repr(result.exception)
    rows = {Path(v.path).name: v for v in open_dataset(tmp_path / "ds").videos(include_errors=True)}
    for name in ("leak.m3u8", "leak.ffconcat"):
        assert rows[name].status == "error" and "container not allowed" in rows[name].error, rows[name]
        assert rows[name].error_kind == "permanent"
    assert rows["fine.mp4"].status == "ok" and len(hits) == before
