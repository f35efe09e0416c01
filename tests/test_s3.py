"""Object storage end to end: a real S3-compatible server (moto) on 127.0.0.1, nothing else.

Builds write into the bucket, read inputs and lists from it, resume and version as on
disk, and give the same bytes as a local build; the trainer streams shards from it; and a
proxy that fails every fifth request (503 SlowDown, 500 InternalError, or 500 after the server
carried the request out) loses nothing.
"""
from __future__ import annotations

import errno
import http.client
import json
import logging
import os
import socket
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from pipeline import open_dataset, storage
from pipeline.build import manifest
from pipeline.verify import verify
from tests.helpers import flowshard, invoke, version_id
from training import data

pytestmark = pytest.mark.slow
ARGS = ["--flow", "dis", "--resize", "none", "--shard-samples", "3", "--executor", "local", "--no-progress"]
BUCKET = "s3://flowshard"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def s3():
    """One moto S3 server on loopback for the module; clients reach it through AWS_ENDPOINT_URL."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # no line per request
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    with pytest.MonkeyPatch.context() as mp:
        # Dummy credentials, no config files, no instance metadata: only the loopback server is asked.
        for key, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                           "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": endpoint,
                           "AWS_EC2_METADATA_DISABLED": "true", "AWS_CONFIG_FILE": "/nonexistent",
                           "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent"}.items():
            mp.setenv(key, value)
        for key in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "FSSPEC_S3"):
            mp.delenv(key, raising=False)
        storage.reset()
        fs, _ = storage.filesystem(BUCKET)
        if not fs.exists("flowshard"):  # moto keeps its buckets per process: another module may have made it
            fs.mkdir("flowshard")
        yield endpoint
        storage.reset()
    server.stop()


def build(src, out, *extra) -> str:
    """Build and return the version id (the command's last line)."""
    return version_id(flowshard("build", src, out, *ARGS, *extra))


def tree(root) -> dict[str, bytes]:
    """Every file below a local folder or a bucket prefix, build state excluded."""
    return {rel: storage.read_bytes(storage.join(root, rel)) for rel in storage.walk_files(root)
            if not rel.startswith(".flowshard/")}


@pytest.fixture(scope="module")
def local(motion_videos, tmp_path_factory):
    """The reference: the same build into a local folder."""
    out = tmp_path_factory.mktemp("local") / "ds"
    return out, build(motion_videos, out)


@pytest.fixture(scope="module")
def bucket_build(s3, motion_videos):
    """A build straight into the bucket, with every remote write recorded in order."""
    out = f"{BUCKET}/out"
    writes: list[str] = []
    seen_commit_during_shards: list[str] = []
    put, write = storage.put_file, storage.write_bytes_atomic

    def recording_put(local_file, loc):
        if storage.exists(storage.join(out, manifest.DATASET_JSON)):
            seen_commit_during_shards.append(str(loc))
        put(local_file, loc)
        writes.append(str(loc))

    def recording_write(loc, payload):
        write(loc, payload)
        writes.append(str(loc))

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(storage, "put_file", recording_put)
        mp.setattr(storage, "write_bytes_atomic", recording_write)
        vid = build(motion_videos, out)
    return out, vid, writes, seen_commit_during_shards


def test_build_into_the_bucket_equals_the_local_build(bucket_build, local):
    out, vid, writes, seen_commit = bucket_build
    local_out, local_vid = local
    assert vid == local_vid
    assert tree(out) == tree(local_out)  # shards, manifests, catalog, dataset.json: byte for byte
    report = verify(out)
    assert report.ok, report.problems
    assert (report.shards, report.samples) == (3, 8)
    remote, reference = open_dataset(out), open_dataset(local_out)
    assert isinstance(remote.root, str) and remote.version == vid
    for v in reference.videos():
        a, b = remote.read(v.video_id), reference.read(v.video_id)
        assert np.array_equal(a.frames, b.frames) and np.array_equal(a.flow, b.flow) and a.meta == b.meta


def test_shards_appear_whole_and_dataset_json_is_written_last(bucket_build):
    out, vid, writes, seen_commit = bucket_build
    assert seen_commit == []  # no dataset.json existed while shards were uploaded
    tars = [i for i, w in enumerate(writes) if w.endswith(".tar")]
    commits = [i for i, w in enumerate(writes) if w.endswith(manifest.DATASET_JSON)]
    assert len(tars) == 3 and max(tars) < min(commits)
    assert writes[-1] == f"{out}/{manifest.DATASET_JSON}"
    folder = f"{out}/versions/{vid}/"
    mine = [w for w in writes if w.startswith(folder)]
    assert mine[-1] == folder + manifest.DATASET_JSON and len(mine) == 4  # units, manifest, shards, then the commit
    for i, w in enumerate(writes):  # a unit's record follows its tar(s)
        if "/.flowshard/units/" in w:
            stem = w.rsplit("/", 1)[-1][: -len(".json")]
            assert any(x.rsplit("/", 1)[-1].startswith(stem) for x in writes[:i] if x.endswith(".tar"))


def test_resume_restores_a_lost_unit_byte_identically(bucket_build, motion_videos):
    out, vid, _, _ = bucket_build
    before = tree(out)
    # The state of a build killed before it committed, with one unit unwritten: no dataset.json
    # (top-level or the version's), one tar and its unit record missing.
    tar = storage.list_files(f"{out}/shards", suffix=".tar")[0]
    for rel in (manifest.DATASET_JSON, f"versions/{vid}/{manifest.DATASET_JSON}", f"shards/{tar}",
                f".flowshard/units/{tar[: -len('.tar')]}.json"):
        storage.remove(f"{out}/{rel}")
    assert not verify(out).ok
    output = flowshard("build", str(motion_videos), out, *ARGS)
    assert "2 unit(s) already done; 3 video(s) computed" in output, output
    assert tree(out) == before
    assert verify(out).ok


def test_locks_on_object_storage(bucket_build, motion_videos):
    out, vid, _, _ = bucket_build
    lock = f"{out}/.flowshard/lock"
    # Held by a live process (this one) that refreshed it just now: the build refuses.
    live = {"host": socket.gethostname(), "pid": os.getpid(), "token": "other", "refreshed": _now(), "ttl": 600}
    storage.write_bytes_atomic(lock, json.dumps(live).encode())
    result = invoke("build", motion_videos, out, *ARGS)
    assert result.exit_code != 0 and "another build is writing" in result.output
    assert f"process {os.getpid()}" in result.output
    # Left by a build that was killed on this machine: taken over at once.
    dead = subprocess.Popen(["true"])
    dead.wait()
    storage.write_bytes_atomic(lock, json.dumps({**live, "pid": dead.pid}).encode())
    assert build(motion_videos, out) == vid
    # Left by a build elsewhere that stopped refreshing it long ago: taken over too.
    storage.write_bytes_atomic(lock, json.dumps({**live, "host": "elsewhere", "refreshed": 0}).encode())
    assert build(motion_videos, out) == vid
    assert not storage.exists(lock)  # released at the end


def _now() -> float:
    return time.time()


def test_a_lock_whose_create_response_was_lost_is_still_ours(s3, monkeypatch):
    url = f"{BUCKET}/locks/lost-response"
    fs, _ = storage.filesystem(url)
    real_pipe = fs.pipe_file
    lost = []

    def lossy(path, value, mode="overwrite", **kwargs):
        out = real_pipe(path, value, mode=mode, **kwargs)
        if mode == "create" and not lost:
            lost.append(path)  # the server created it, the client never heard back
            raise OSError(errno.EBUSY, "connection reset after the request was sent")
        return out

    monkeypatch.setattr(fs, "pipe_file", lossy)
    with storage.lock(url) as held:
        held.check()
        assert lost and json.loads(storage.read_bytes(url))["pid"] == os.getpid()
    assert not storage.exists(url)


def test_a_lock_taken_over_meanwhile_refuses_the_commit(s3):
    url = f"{BUCKET}/locks/taken-over"
    with storage.lock(url, ttl=0.3) as held:
        storage.write_bytes_atomic(url, json.dumps({"host": "elsewhere", "pid": 1, "token": "other",
                                                    "refreshed": _now(), "ttl": 600}).encode())
        deadline = _now() + 10
        while held.lost is None and _now() < deadline:
            time.sleep(0.05)
        with pytest.raises(storage.LockHeld, match="taken over by process 1 on elsewhere"):
            held.check()
    assert storage.exists(url)  # the other writer's lock is left alone
    storage.remove(url)


def test_a_second_version_in_the_bucket_shares_unchanged_shards(bucket_build, motion_videos, tmp_path):
    from pipeline.build import versions as version

    out, v1, _, _ = bucket_build
    subset = tmp_path / "in"
    for p in sorted(motion_videos.glob("*/*.mp4"))[1:]:  # one video removed
        (subset / p.parent.name).mkdir(parents=True, exist_ok=True)
        (subset / p.parent.name / p.name).symlink_to(p)
    output = flowshard("build", str(subset), out, *ARGS)
    v2 = output.strip().splitlines()[-1]
    assert v2 != v1 and "0 video(s) computed" in output  # stored samples copied, none recomputed
    rows = {r["version"]: r for r in version.list_versions(out)}
    assert set(rows) == {v1, v2} and rows[v2]["latest"] and rows[v2]["created"]
    names = {v: {s.name for s in open_dataset(f"{out}@{v[:8]}").shards()} for v in (v1, v2)}
    assert names[v1] & names[v2] and rows[v2]["new_bytes"] < rows[v2]["bytes"]
    assert verify(out).ok and verify(f"{out}@{v1}").ok
    assert version.diff_versions(out, v1, v2)["removed"][0]["path"] == "down/v_down_g00.mp4"


@pytest.fixture(scope="module")
def bucket_videos(s3, motion_videos):
    """The motion videos under BUCKET/videos (and two files that are not videos); their bytes."""
    for p in sorted(motion_videos.glob("*/*.mp4")):
        storage.put_file(p, f"{BUCKET}/videos/{p.parent.name}/{p.name}")
    storage.write_bytes_atomic(f"{BUCKET}/videos/left/.hidden.mp4", b"not listed")
    storage.write_bytes_atomic(f"{BUCKET}/videos/left/notes.txt", b"not a video")
    return f"{BUCKET}/videos", sum(p.stat().st_size for p in motion_videos.glob("*/*.mp4"))


def test_inputs_in_the_bucket_give_the_local_bytes(s3, bucket_videos, motion_videos, local, tmp_path):
    local_out, local_vid = local
    out = tmp_path / "from_bucket"
    vid = build(bucket_videos[0], out)
    assert build(bucket_videos[0], tmp_path / "again") == vid  # named by ETag, size and version: deterministic
    # Objects are named by their ETag (never downloaded by the driver), files by their sha256:
    # another version id, the same samples byte for byte.
    assert vid != local_vid and sorted(tree(out / "shards").values()) == sorted(tree(local_out / "shards").values())
    assert not (out / ".flowshard" / "content_hashes.json").exists()  # nothing was hashed by the driver

    # A CSV list in the bucket: relative paths are relative to the list's prefix.
    rows = ["path,label,split"] + [f"../videos/{p.parent.name}/{p.name},{p.parent.name},{'test' if p.stem.endswith('1') else 'train'}"
                                   for p in sorted(motion_videos.glob("*/*.mp4"))]
    storage.write_bytes_atomic(f"{BUCKET}/lists/videos.csv", "\n".join(rows).encode())
    build(f"{BUCKET}/lists/videos.csv", f"{BUCKET}/from_list")
    listed = open_dataset(f"{BUCKET}/from_list")
    assert listed.info["counts"]["splits"] == {"test": 4, "train": 4}
    hashes = [{r["path"].rsplit("/", 1)[-1]: r["content_sha256"] for r in manifest.read_rows(f"{root}/manifest.parquet")}
              for root in (str(local_out), f"{BUCKET}/from_list")]
    assert hashes[0] == hashes[1] and all(hashes[0].values())  # hashed where they were decoded
    reference = open_dataset(local_out)
    for v in listed.videos():
        twin = reference.read(v.path.replace("../videos/", "").replace("/", "_").removesuffix(".mp4"))
        assert np.array_equal(listed.read(v.video_id).flow, twin.flow)
    assert verify(f"{BUCKET}/from_list").ok


def test_training_streams_clip_shards_from_the_bucket(bucket_build, local, tmp_path, monkeypatch):
    out, v1, _, _ = bucket_build
    local_out, local_vid = local
    assert data.open_source(f"{local_out}@{local_vid[:6]}").version == local_vid  # @VERSION locally too
    clips = f"{BUCKET}/clips"
    flowshard("clips", f"{out}@{v1[:8]}", clips, "--clip-len", "4", "--per-video", "2", "--shard-samples", "6")
    source = data.open_source(clips)
    assert source.kind == "clips" and source.num_samples("train") == 16
    assert all(s.url.startswith(f"{clips}/shards/") for s in source.shards)
    videos = data.open_source(f"{out}@{v1[:8]}")  # OUTPUT@VERSION, resolved like open_dataset
    assert videos.kind == "videos" and videos.version == v1 and videos.root == out
    opened = []
    real_open = storage.open_read

    def recording_open(loc, **kwargs):
        opened.append(str(loc))
        return real_open(loc, **kwargs)

    monkeypatch.setattr(storage, "open_read", recording_open)
    run = tmp_path / "run"
    flowshard("train", clips, "--output", str(run), "--epochs", "1", "--arch", "resnet18", "--weights", "none",
              "--crop-size", "32",
              "--batch-size", "4", "--clip-len", "4", "--workers", "0", "--device", "cpu", "--eval-every", "0",
              "--no-progress")
    assert (run / "last.pt").is_file()
    assert {u for u in opened if u.endswith(".tar")} <= {s.url for s in source.shards}
    assert any(u.startswith(f"{clips}/shards/") for u in opened)  # streamed from the bucket


def test_training_writes_checkpoints_and_logs_to_the_bucket_and_resumes_from_it(bucket_build, caplog):
    caplog.set_level(logging.INFO)  # what the run's log file copies
    out, v1, _, _ = bucket_build
    clips, run = f"{BUCKET}/clips_run", f"{BUCKET}/runs/r18"
    flowshard("clips", f"{out}@{v1[:8]}", clips, "--clip-len", "4", "--per-video", "2")
    args = ["train", clips, "--output", run, "--arch", "resnet18", "--weights", "none", "--crop-size", "32",
            "--batch-size", "4", "--workers", "0", "--device", "cpu", "--no-progress", "--eval-split", "train",
            "--test-clips", "1"]
    flowshard(*args, "--epochs", "1")
    files = set(storage.walk_files(run))
    assert {"last.pt", "epoch_000.pt", "config.json", "train.log", "train_summary.json",
            "eval_epoch_000.json", "eval_epoch_000_confusion.png"} <= files
    assert any(f.startswith("tb/events.out.tfevents") for f in files)
    summary = json.loads(storage.read_bytes(f"{run}/train_summary.json"))
    assert summary["eval_split"] == "train" and summary["steps"] == summary["steps_per_epoch"]
    # --resume alone reads OUTPUT/last.pt from the bucket and goes on from its step; --keep-epochs
    # removes the older epoch checkpoint from the bucket.
    flowshard(*args, "--epochs", "2", "--resume", "--keep-epochs", "1")
    resumed = json.loads(storage.read_bytes(f"{run}/train_summary.json"))
    assert resumed["steps"] == 2 * summary["steps"]
    assert storage.isfile(f"{run}/epoch_001.pt") and not storage.exists(f"{run}/epoch_000.pt")
    log_text = storage.read_bytes(f"{run}/train.log")
    assert log_text.count(b"training two_stream (resnet18)") == 2 and b"resumed from" in log_text  # appended


# --- a flaky server -------------------------------------------------------------------------

# (status, code, message, whether the request reaches the server first: a lost response)
_ERRORS = ((503, "SlowDown", "Please reduce your request rate.", False),
           (500, "InternalError", "We encountered an internal error. Please try again.", False),
           (500, "InternalError", "We encountered an internal error. Please try again.", True))
_HOP = {"connection", "keep-alive", "transfer-encoding", "expect", "proxy-connection", "te", "upgrade"}


class FlakyProxy:
    """An HTTP proxy on 127.0.0.1 in front of the S3 server that fails every `every`-th request:
    503 SlowDown or 500 InternalError without forwarding it, or 500 after the server has
    carried it out (its response lost), in turn."""

    def __init__(self, upstream: str, every: int = 5) -> None:
        self.upstream = upstream.split("://", 1)[1]
        self.every = every
        self.requests = 0
        self.failures = {"503": 0, "500": 0, "500 after": 0}
        self.served: dict[str, int] = {}  # path -> body bytes of the GET responses sent
        self.lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def _fail_now(self) -> tuple | None:
        with self.lock:
            self.requests += 1
            if self.requests % self.every:
                return None
            error = _ERRORS[(self.requests // self.every) % len(_ERRORS)]
            self.failures[f"{error[0]}{' after' if error[3] else ''}"] += 1
            return error

    def _handler(self):
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:  # quiet
                pass

            def _body(self) -> bytes:
                if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
                    chunks = []
                    while True:
                        size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                        if size == 0:
                            self.rfile.readline()
                            return b"".join(chunks)
                        chunks.append(self.rfile.read(size))
                        self.rfile.readline()
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def _reply(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
                self.send_response(status)
                for k, v in headers:
                    self.send_header(k, v)
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            def _handle(self) -> None:
                body = self._body()
                error = proxy._fail_now()
                if error is None:
                    return self._forward(body)
                status, code, message, forwarded = error
                if forwarded:
                    self._forward(body, reply=False)
                xml = (f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{code}</Code>'
                       f"<Message>{message}</Message><RequestId>flaky</RequestId></Error>").encode()
                self._reply(status, [("Content-Type", "application/xml"), ("Content-Length", str(len(xml)))], xml)

            def _forward(self, body: bytes, reply: bool = True) -> None:
                conn = http.client.HTTPConnection(proxy.upstream, timeout=60)
                try:
                    headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP}
                    headers["Content-Length"] = str(len(body))
                    conn.request(self.command, self.path, body=body, headers=headers)
                    resp = conn.getresponse()
                    data = resp.read()
                    out = [(k, v) for k, v in resp.getheaders() if k.lower() not in _HOP | {"content-length"}]
                    length = resp.getheader("Content-Length") if self.command == "HEAD" else str(len(data))
                    if reply and self.command == "GET":
                        path = self.path.split("?", 1)[0]
                        with proxy.lock:
                            proxy.served[path] = proxy.served.get(path, 0) + len(data)
                    if reply:
                        self._reply(resp.status, out + [("Content-Length", length or "0")], data)
                finally:
                    conn.close()

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle

        return Handler


def test_a_flaky_server_loses_nothing(s3, motion_videos, local, monkeypatch):
    local_out, local_vid = local
    storage.filesystem(BUCKET)[0].mkdir("flaky")
    proxy = FlakyProxy(s3, every=5)
    monkeypatch.setenv("FSSPEC_S3", "{}")  # the CLI exports --storage-options here; restored after the test
    options = json.dumps({"s3": {"endpoint_url": proxy.url}})
    out = "s3://flaky/out"
    try:
        output = flowshard("--storage-options", options, "build", str(motion_videos), out, *ARGS)
        assert json.loads(os.environ["FSSPEC_S3"]) == {"endpoint_url": proxy.url}  # for child processes
        assert "ok (3 shards, 8 samples)" in flowshard("--storage-options", options, "verify", out)
        requests, failures = proxy.requests, dict(proxy.failures)
    finally:
        storage.reset()  # back to the fixture's clean endpoint
        proxy.stop()
    print(f"flaky server: {requests} requests, {failures} failed")
    assert min(failures.values()) >= 3  # every kind of failure happened, and was retried
    assert output.strip().splitlines()[-1] == local_vid
    assert tree(out) == tree(local_out)  # nothing lost or changed: byte-identical to the clean build


# --- inputs read once ------------------------------------------------------------------------

def _fetched(proxy: FlakyProxy, prefix: str) -> int:
    """Bytes of the objects under `prefix` (s3://bucket/key) the proxy served."""
    path = "/" + prefix.split("://", 1)[1] + "/"
    return sum(n for p, n in proxy.served.items() if p.startswith(path))


@pytest.fixture
def counting(s3, tmp_path, monkeypatch):
    """A proxy in front of the server that counts the bytes it serves, and an empty input cache."""
    from pipeline.store import cache

    proxy = FlakyProxy(s3, every=10**9)  # never fails
    monkeypatch.setenv("FSSPEC_S3", "{}")  # the CLI exports --storage-options here; restored after the test
    monkeypatch.setitem(cache._CACHE, "dir", str(tmp_path / "input-cache"))
    yield proxy
    storage.reset()
    proxy.stop()


def test_bucket_inputs_are_read_once(bucket_videos, counting, tmp_path):
    """The driver names objects by their ETag without reading them; the worker that decodes a
    video fetches it once and hashes it there (the manifest's content_sha256)."""
    prefix, size = bucket_videos
    options = json.dumps({"s3": {"endpoint_url": counting.url}})
    flowshard("--storage-options", options, "build", prefix, str(tmp_path / "ds"), *ARGS)
    ratio = _fetched(counting, prefix) / size
    print(f"bytes fetched per input byte, in-process build: {ratio:.3f}")
    assert 1.0 <= ratio <= 1.05
    rows = manifest.read_rows(tmp_path / "ds" / "manifest.parquet")
    assert all(len(r["content_sha256"]) == 64 for r in rows)


def test_copies_asked_for_at_once_download_the_object_once(bucket_videos, motion_videos, counting):
    """The parts of a video shared over several CPUs each probe and decode it at the same time
    on one node: the local cache downloads it once, the others wait and read that copy."""
    import threading

    from pipeline.store import cache

    prefix, _ = bucket_videos
    storage.configure({"s3": {"endpoint_url": counting.url}})
    video = sorted(motion_videos.glob("*/*.mp4"))[0]
    url, size = f"{prefix}/{video.parent.name}/{video.name}", video.stat().st_size
    start, paths, errors = threading.Barrier(4), [], []

    def copy():
        start.wait()
        try:
            paths.append(cache.local_copy(url))
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=copy) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(set(paths)) == 1 and Path(paths[0]).stat().st_size == size
    assert _fetched(counting, prefix) == size  # one download, not four
    assert [p.name for p in Path(paths[0]).parent.iterdir()] == [Path(paths[0]).name]  # no lock or temporary left


def test_bucket_inputs_are_read_once_on_ray(bucket_videos, counting, tmp_path):
    """On Ray the probe (which fetches the object) and the decoder run on the same node: one read."""
    import ray

    prefix, size = bucket_videos
    env = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
           "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true",
           "FSSPEC_S3": json.dumps({"endpoint_url": counting.url}), "TMPDIR": str(tmp_path)}
    ray.shutdown()  # a Ray whose workers reach this server (test keys, never forwarded in production)
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, runtime_env={"env_vars": env})
    try:
        options = json.dumps({"s3": {"endpoint_url": counting.url}})
        flowshard("--storage-options", options, "build", prefix, str(tmp_path / "ds"), *ARGS[:-3], "--no-progress")
    finally:
        ray.shutdown()
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
                 runtime_env={"env_vars": {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}})
    ratio = _fetched(counting, prefix) / size
    print(f"bytes fetched per input byte, Ray build: {ratio:.3f}")
    assert 1.0 <= ratio <= 1.05
    assert open_dataset(tmp_path / "ds").info["counts"]["ok"] == 8
