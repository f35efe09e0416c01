"""Training on Ray Train (jobs.train_on_ray) on this machine's loopback Ray, two CPU workers.

- An interrupted Ray Train run equals a torchrun run: rank 1 is SIGKILLed inside the first
  epoch, Ray Train restarts the group from the step checkpoint, and the final weights and
  losses equal those of a 2-process torchrun run with the same seed and batches; the
  visits of the interrupted epoch hold every sample of each rank's block once.
- Elastic (`--ray-workers 1-2`) on a loopback `ray.cluster_utils.Cluster` of two 1-CPU
  worker nodes: one node is removed inside epoch 1, the group restarts with the one worker
  left (global batch kept, epoch 1 from its start) and finishes; each epoch used every
  sample once. The other way: a run started on one node grows to two workers when a second
  node joins inside epoch 1 (Ray Train's resize), from epoch_000.pt, each sample once.
- Checkpoints and logs go to s3:// (the loopback moto server), and `flowshard evaluate`
  reads them.
- Step checkpoints resume mid-epoch in a plain run too, and corrupt samples are caught
  before use (an error naming shard and key, or a counted skip).
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch
from test_clips import flowshard, motion_list
from test_s3 import BUCKET, s3  # noqa: F401  (the loopback S3 server fixture)

from jobs.train_on_ray import RayTrainConfig, check_global_batch, free_dir_name, parse_workers, train_on_ray
from training import checkpoint, data
from training.data.integrity import CorruptSampleError

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
ARGS = ["--arch", "resnet18", "--weights", "none", "--workers", "0", "--device", "cpu", "--no-progress",
        "--crop-size", "32", "--batch-size", "2", "--clip-len", "4", "--steps-per-epoch", "3", "--epochs", "2",
        "--eval-every", "0", "--lr", "0.05", "--seed", "3"]
KILL_AT = 2  # rank 1 dies as soon as its report of the step checkpoint at 2 batches of epoch 0 returns


@pytest.fixture(scope="module")
def motion(tmp_path_factory):
    """4 motion classes x 4 textures of 16 frames: textures 0-2 train (12 videos), 3 test."""
    root = tmp_path_factory.mktemp("ray_motion")
    ds = root / "ds"
    flowshard("build", str(motion_list(root, per_class=4, test_from=3, frames=16)), str(ds), "--flow", "farneback",
              "--resize", "none", "--executor", "local", "--shard-samples", "5", "--no-progress")
    return ds


def config_of(ds: Path, out, *extra: str):
    """The TrainConfig `flowshard train DS --output OUT ARGS EXTRA` would run."""
    from jobs.model_options import resolve_defaults
    from jobs.commands.train import make_train_config, train_command

    ctx = train_command.make_context("train", [str(ds), "--output", str(out), *ARGS, *extra])
    o = dict(ctx.params)
    for key in ("dataset", "output", "progress", "ray_workers", "ray_gpus_per_worker", "address", "max_failures"):
        o.pop(key)
    o["clip_len"] = o["clip_len"] or 4
    return make_train_config(str(ds), str(out), data.open_source(ds).num_classes, resolve_defaults(o))


def record_visits(folder: Path, **fields) -> None:
    """In this Ray Train worker, append each batch's sample keys (with `fields`) to folder/rank{RANK}.jsonl."""
    from training import engine

    real = engine.epoch_batches

    def epoch_batches(loader, steps, epoch, progress):
        rank = int(os.environ["RANK"])
        for index, (bar, batch) in enumerate(real(loader, steps, epoch, progress), loader.state.done):
            with open(folder / f"rank{rank}.jsonl", "a") as f:
                f.write(json.dumps({**fields, "epoch": epoch, "index": index, "keys": batch["key"]}) + "\n")
            yield bar, batch

    engine.epoch_batches = epoch_batches


def after_report(action) -> None:
    """In this Ray Train worker, call action(metrics) each time a checkpoint report has returned
    (Ray Train has committed it)."""
    from jobs import train_on_ray

    real = train_on_ray.report_checkpoint

    def report_checkpoint(metrics: dict, name: str | None, **kw) -> None:
        real(metrics, name, **kw)
        action(metrics)

    train_on_ray.report_checkpoint = report_checkpoint


def visits_of(folder: Path, rank: int) -> list[dict]:
    return [json.loads(line) for line in (folder / f"rank{rank}.jsonl").read_text().splitlines()]


def recording_loop(config: dict, visits: str) -> None:
    """jobs.train_on_ray.train_loop, recording each batch's sample keys, and killing rank 1
    (SIGKILL, no clean-up) in the first attempt the moment its report of the step checkpoint
    after KILL_AT batches of epoch 0 returns: the tightest race between a report and a death
    (without waiting for Ray Train's commit, the report died with the process)."""
    from jobs import train_on_ray

    folder = Path(visits)
    attempt = 2 if (folder / "killed").exists() else 1

    def kill(metrics: dict) -> None:
        if attempt == 1 and int(os.environ["RANK"]) == 1 and (metrics["epoch"], metrics["epoch_step"]) == (0, KILL_AT):
            (folder / "killed").touch()
            os.kill(os.getpid(), signal.SIGKILL)

    record_visits(folder, attempt=attempt)
    after_report(kill)
    train_on_ray.train_loop(config)


def expected_keys(ds: Path, cfg, rank: int, epoch: int) -> list[list[str]]:
    """Rank `rank`'s batches of `epoch` (of 2 ranks), drawn in this process."""
    os.environ.update(RANK=str(rank), WORLD_SIZE="2")
    try:
        loader = data.make_loader(data.open_source(ds), "train", cfg.data, train=True, steps=3)
        loader.set_epoch(epoch)
        return [b["key"] for b, _ in zip(loader, range(3), strict=False)]
    finally:
        os.environ.pop("RANK")
        os.environ.pop("WORLD_SIZE")


@pytest.fixture(scope="module")
def torchrun_run(motion, tmp_path_factory):
    out = tmp_path_factory.mktemp("torchrun") / "run"
    port = 29500 + os.getpid() % 1000
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "2",
           "--master_addr", "127.0.0.1", "--master_port", str(port), "-m", "jobs.train", "train", str(motion),
           "--output", str(out), *ARGS]
    proc = subprocess.run(cmd, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return out


def test_a_killed_worker_restarts_from_the_step_checkpoint_and_equals_torchrun(motion, torchrun_run, ray_local,
                                                                              tmp_path):
    import ray.cloudpickle

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # Ray workers do not import tests/
    visits = tmp_path / "visits"
    visits.mkdir()
    cfg = dataclasses.replace(config_of(motion, tmp_path / "ray"), checkpoint_every_steps=2)
    summary = train_on_ray(cfg, RayTrainConfig(min_workers=2, max_workers=2, max_failures=1),
                           loop=functools.partial(recording_loop, visits=str(visits)))
    assert (visits / "killed").exists()  # the first attempt died
    reference = json.loads((torchrun_run / "train_summary.json").read_text())
    assert summary["steps_per_rank"] == reference["steps_per_rank"] == [6, 6]
    assert summary["world_size"] == 2
    ours, theirs = checkpoint.load_checkpoint(tmp_path / "ray" / "last.pt"), checkpoint.load_checkpoint(
        torchrun_run / "last.pt")
    for name, tensor in theirs["model"].items():
        torch.testing.assert_close(ours["model"][name], tensor, rtol=1e-4, atol=1e-5, msg=name)
    assert summary["train"]["loss"] == pytest.approx(reference["train"]["loss"], rel=1e-4)
    assert (tmp_path / "ray" / "epoch_001.pt").is_file() and (tmp_path / "ray" / "train.log").is_file()
    assert any(p.name.startswith("checkpoint_step_") for p in (tmp_path / "ray").iterdir())  # Ray Train's records
    log_text = (tmp_path / "ray" / "train.log").read_text()
    assert "resumed from" in log_text and "2 batches of the next" in log_text, log_text
    # Visits of the interrupted epoch: what the first attempt trained up to its step checkpoint,
    # then the second attempt; exactly each rank's block. 2 ranks x 3 steps x 2 = the 12 train
    # videos: each once.
    flat = []
    for rank in (0, 1):
        rows = visits_of(visits, rank)
        used = [r["keys"] for r in sorted(rows, key=lambda r: r["index"]) if r["epoch"] == 0
                and (r["attempt"] == 2 or r["index"] < KILL_AT)]
        assert used == expected_keys(motion, cfg, rank, 0)
        flat += [k for keys in used for k in keys]
    assert len(flat) == len(set(flat)) == 12


RESIZE_AT = (1, 1)  # (epoch, batches done): the group asks for a node change after this step checkpoint


def resizing_loop(config: dict, visits: str, asks: int) -> None:
    """jobs.train_on_ray.train_loop, recording each batch's keys with the group's size; in a
    group of `asks` workers, the last rank writes visits/ask (its node's id) once its RESIZE_AT
    step checkpoint is committed, then waits there for the test to change the cluster and Ray
    Train to stop the group."""
    import time

    import ray

    from jobs import train_on_ray

    folder, size = Path(visits), int(os.environ["WORLD_SIZE"])

    def ask(metrics: dict) -> None:
        last_rank = size == asks and int(os.environ["RANK"]) == asks - 1
        if last_rank and (metrics["epoch"], metrics["epoch_step"]) == RESIZE_AT:
            (folder / "ask.tmp").write_text(ray.get_runtime_context().get_node_id())
            (folder / "ask.tmp").rename(folder / "ask")
            time.sleep(600)  # ends with the node or the group

    record_visits(folder, size=size)
    after_report(ask)
    train_on_ray.train_loop(config)


@contextlib.contextmanager
def loopback_cluster(monkeypatch, workers: int):
    """A loopback Ray cluster: a head without CPUs (the driver, Ray Train's controller) and
    `workers` worker nodes of 1 CPU, one Ray Train worker each; yields (cluster, nodes)."""
    import ray
    from ray.cluster_utils import Cluster

    monkeypatch.setenv("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    # Right after a node goes, Ray Train's elastic policy still counts its CPU and first tries the
    # old size, whose placement group waits this long before it retries smaller (60 s by default).
    monkeypatch.setenv("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S", "10")
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})

    def start():
        nodes = [cluster.add_node(num_cpus=1) for _ in range(workers)]
        ray.init(address=cluster.address, log_to_driver=False)
        return cluster, nodes

    try:
        with another_ray(start) as started:
            yield started
    finally:
        cluster.shutdown()


@pytest.fixture
def two_node_cluster(monkeypatch):
    """`loopback_cluster` with two worker nodes."""
    with loopback_cluster(monkeypatch, 2) as started:
        yield started


@pytest.fixture
def one_node_cluster(monkeypatch):
    """`loopback_cluster` with one worker node (a test adds the second)."""
    with loopback_cluster(monkeypatch, 1) as started:
        yield started


def when_asked(folder: Path, action, stop: threading.Event) -> threading.Thread:
    """A thread that calls action(node id) once folder/ask appears (resizing_loop), then stays
    until `stop`: Ray starts a node's processes with PR_SET_PDEATHSIG, which fires when the
    thread that started them ends, not the process, so a node this thread adds lives as long."""
    def run() -> None:
        while not stop.wait(0.2):
            if (folder / "ask").exists():
                action((folder / "ask").read_text())
                stop.wait()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_an_elastic_group_goes_on_with_fewer_workers_when_a_node_goes(motion, two_node_cluster, tmp_path):
    import ray.cloudpickle

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # Ray workers do not import tests/
    cluster, nodes = two_node_cluster
    visits, out = tmp_path / "visits", tmp_path / "elastic"
    visits.mkdir()
    cfg = dataclasses.replace(config_of(motion, out), checkpoint_every_steps=1)
    stop = threading.Event()
    remover = when_asked(visits, lambda node_id: cluster.remove_node(next(n for n in nodes if n.node_id == node_id)),
                         stop)
    try:
        summary = train_on_ray(cfg, RayTrainConfig(min_workers=1, max_workers=2, max_failures=1),
                               loop=functools.partial(resizing_loop, visits=str(visits), asks=2))
    finally:
        stop.set()
        remover.join()
    assert (visits / "ask").exists() and len([n for n in ray.nodes() if n["Alive"]]) == 2  # head + 1 left
    # The run ended on one worker, with the same global batch (2 per rank x 2 = 4 on one rank) and
    # the same steps per epoch; the 2-worker step checkpoint inside epoch 1 took it back to epoch_000.pt.
    assert summary["world_size"] == 1 and summary["steps_per_rank"] == [6]
    log_text = (out / "train.log").read_text()
    assert "2 rank(s), batch 2 per rank" in log_text and "1 rank(s), batch 4 per rank" in log_text, log_text
    assert "the epoch restarts from its beginning" in log_text, log_text
    marker = json.loads((out / "checkpoint_step_000000006" / "flowshard.json").read_text())  # Ray Train's last
    assert marker["world_size"] == 1 and marker["epoch"] == 1
    assert checkpoint.load_checkpoint(out / "last.pt")["step"] == 6
    # Equal use: epoch 0 drawn by the 2 workers, epoch 1 by the 1 left; each holds the 12 train videos once.
    rows = visits_of(visits, 0) + visits_of(visits, 1)
    first = [k for r in rows if r["epoch"] == 0 and r["size"] == 2 for k in r["keys"]]
    second = [k for r in rows if r["epoch"] == 1 and r["size"] == 1 for k in r["keys"]]
    assert len(first) == len(set(first)) == 12 and sorted(second) == sorted(first)


def test_an_elastic_group_grows_when_a_node_joins(motion, one_node_cluster, tmp_path, monkeypatch):
    import time

    import ray._private.utils
    import ray.cloudpickle

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # Ray workers do not import tests/
    cluster, _ = one_node_cluster
    visits, out = tmp_path / "visits", tmp_path / "elastic"
    visits.mkdir()
    cfg = dataclasses.replace(config_of(motion, out), checkpoint_every_steps=1)
    stop, added = threading.Event(), []
    # A node started outside the main thread cannot set the SIGTERM handler that would stop its
    # processes with this one (signal.signal refuses); cluster.shutdown() stops them here.
    monkeypatch.setattr(ray._private.utils, "set_sigterm_handler", lambda handler: None)
    # The larger group starts workers on a node that has none yet (each a new process importing
    # torch): more than the fixture's 10 s on a busy machine.
    monkeypatch.setenv("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S", "90")
    adder = when_asked(visits, lambda _: added.append(cluster.add_node(num_cpus=1)), stop)
    t0 = time.monotonic()
    try:
        summary = train_on_ray(cfg, RayTrainConfig(min_workers=1, max_workers=2, max_failures=0, elastic_interval_s=2),
                               loop=functools.partial(resizing_loop, visits=str(visits), asks=1))
    finally:
        stop.set()
        adder.join()
    assert (visits / "ask").exists() and added and time.monotonic() - t0 < 300
    # Started alone (the whole global batch of 4 on one rank), ended as two (2 per rank) once the
    # node joined: Ray Train stopped the lone worker and started two from the last committed
    # checkpoint, a step inside epoch 1 of the other geometry, so epoch 1 began again from
    # epoch_000.pt (and the log says so). A resize is not a failure: --max-failures 0 held.
    assert summary["world_size"] == 2 and summary["steps_per_rank"] == [6, 6]
    log_text = (out / "train.log").read_text()
    assert "1 rank(s), batch 4 per rank" in log_text and "2 rank(s), batch 2 per rank" in log_text, log_text
    assert "the epoch restarts from its beginning" in log_text, log_text
    assert f"resumed from {out / 'epoch_000.pt'} at step 3" in log_text, log_text
    assert checkpoint.load_checkpoint(out / "last.pt")["step"] == 6
    # Equal use: epoch 0 drawn by the lone worker, epoch 1 by the two; each holds the 12 train videos once.
    rows = visits_of(visits, 0) + visits_of(visits, 1)
    first = [k for r in rows if r["epoch"] == 0 and r["size"] == 1 for k in r["keys"]]
    second = [k for r in rows if r["epoch"] == 1 and r["size"] == 2 for k in r["keys"]]
    assert len(first) == len(set(first)) == 12 and sorted(second) == sorted(first)


LOCAL_RAY = {"address": "local", "num_cpus": 2, "include_dashboard": False, "log_to_driver": False,
             "runtime_env": {"env_vars": {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}}}  # as conftest's ray_local


@contextlib.contextmanager
def another_ray(start):
    """Ray as start() connects it instead of the session's, which comes back after."""
    import ray

    had = ray.is_initialized()
    ray.shutdown()
    try:
        yield start()
    finally:
        ray.shutdown()
        if had:
            ray.init(**LOCAL_RAY)


@pytest.fixture
def ray_with_s3_env(s3):  # noqa: F811
    """A local Ray started inside the S3 server's environment (its workers, Ray Train's controller
    among them, inherit the endpoint and credentials)."""
    import ray

    with another_ray(lambda: ray.init(**LOCAL_RAY)):
        yield


def test_checkpoints_to_s3_then_evaluate_reads_them(motion, ray_with_s3_env, tmp_path):
    from pipeline import storage

    out = f"{BUCKET}/ray_runs/r18"
    cfg = dataclasses.replace(config_of(motion, out), epochs=1)
    summary = train_on_ray(cfg, RayTrainConfig(min_workers=2, max_workers=2))
    files = set(storage.walk_files(out))
    assert {"last.pt", "epoch_000.pt", "config.json", "train.log", "train_summary.json"} <= files
    assert any(f.startswith("tb/") for f in files) and any(f.startswith("checkpoint_step_") for f in files)
    assert summary["steps"] == 3
    text = flowshard("evaluate", str(motion), f"{out}/last.pt", "--device", "cpu", "--workers", "0", "--no-progress",
                     "--test-clips", "2")
    assert "fused" in text


def test_worker_counts_and_the_global_batch_rule():
    assert parse_workers("4") == (4, 4) and parse_workers("2-8") == (2, 8)
    with pytest.raises(ValueError, match="MIN-MAX"):
        parse_workers("two")
    with pytest.raises(ValueError, match="MIN <= MAX"):
        RayTrainConfig(min_workers=3, max_workers=2)
    assert check_global_batch(6, RayTrainConfig(min_workers=2, max_workers=3)) == 18
    with pytest.raises(ValueError, match=r"does not split evenly over \[3\]"):
        check_global_batch(4, RayTrainConfig(min_workers=2, max_workers=4))


def test_a_step_reached_again_gets_a_ray_train_folder_of_its_own(tmp_path):
    (tmp_path / "checkpoint_step_000000004").mkdir()
    (tmp_path / "checkpoint_step_000000004_2").mkdir()
    assert free_dir_name(str(tmp_path), 4) == "checkpoint_step_000000004_3"
    assert free_dir_name(str(tmp_path), 5) == "checkpoint_step_000000005"


def test_a_step_checkpoint_resumes_mid_epoch_exactly_in_a_plain_run(motion, tmp_path):
    args = [str(motion), *ARGS, "--epochs", "1", "--checkpoint-every-steps", "2"]
    flowshard("train", *args, "--output", str(tmp_path / "a"))
    step_ckpt = tmp_path / "b" / "last.pt"
    # Interrupt after the step checkpoint: run the first 2 steps only, by stopping at its report.
    cfg = config_of(motion, tmp_path / "b", "--epochs", "1", "--checkpoint-every-steps", "2")

    class Stop(Exception):
        pass

    def stop(metrics, name):
        if metrics["epoch_step"] == 2:
            raise Stop

    from jobs.train import train

    with pytest.raises(Stop):
        train(cfg, progress=False, report=stop)
    assert checkpoint.load_checkpoint(step_ckpt)["position"]["epoch_step"] == 2
    flowshard("train", *args, "--output", str(tmp_path / "b"), "--resume")
    a, b = checkpoint.load_checkpoint(tmp_path / "a" / "last.pt"), checkpoint.load_checkpoint(step_ckpt)
    assert a["step"] == b["step"] == 3
    for name, tensor in a["model"].items():
        torch.testing.assert_close(b["model"][name], tensor, msg=name)


def _corrupt_one_sample(ds: Path) -> tuple[str, str]:
    """Flip one byte inside a stored JPEG of the first train shard; returns (shard, key)."""
    import tarfile

    spec = data.open_source(ds).split_shards("train")[0]
    with tarfile.open(spec.url) as tar:
        member = next(m for m in tar.getmembers() if m.name.endswith(".jpg"))
    raw = bytearray(Path(spec.url).read_bytes())
    raw[member.offset_data + member.size // 2] ^= 0xFF
    Path(spec.url).write_bytes(bytes(raw))
    return spec.name, member.name.split(".", 1)[0]


def test_a_corrupt_sample_is_an_error_naming_it_or_a_counted_skip(motion, tmp_path, caplog):
    import shutil

    ds = tmp_path / "ds"
    shutil.copytree(motion, ds)
    name, key = _corrupt_one_sample(ds)
    source = data.open_source(ds)
    cfg = config_of(ds, tmp_path / "run").data
    steps = 6  # every train sample of one worker stream, the corrupt one included
    loader = data.make_loader(source, "train", dataclasses.replace(cfg, batch_size=2), train=True, steps=steps)
    with pytest.raises(CorruptSampleError, match=f"shard {name}: sample {key} "):
        list(zip(loader, range(steps), strict=False))
    skipping = dataclasses.replace(cfg, batch_size=2, on_corrupt="skip")
    loader = data.make_loader(source, "train", skipping, train=True, steps=steps)
    keys = [k for b, _ in zip(loader, range(steps), strict=False) for k in b["key"]]
    assert key not in keys and len(keys) == 12
    assert f"sample {key} does not match" in caplog.text and "1 corrupt sample(s) skipped" in caplog.text
