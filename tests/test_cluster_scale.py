"""A build that grows with the cluster, and writers that survive, on loopback Ray clusters.

Each test starts its own `ray.cluster_utils.Cluster` with the head alone (1-2 CPUs), so that
nodes can join while the build runs, as they do when the autoscaler starts them.
"""
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

from pipeline import open_dataset
from pipeline.build.assembly import spool_tag
from pipeline.build.config import BuildConfig, ShardConfig
from pipeline.build.run import build_dataset
from pipeline.decode import DecodeConfig
from pipeline.flow.config import FlowConfig
from pipeline.stages.config import SampleConfig, WorkerConfig
from pipeline.synthetic import motion

ray = pytest.importorskip("ray")
from ray.cluster_utils import Cluster  # noqa: E402

from pipeline.cluster import nodes, scheduler  # noqa: E402
from pipeline.cluster.executor import RayExecutor  # noqa: E402
from pipeline.cluster.startup import RayConfig  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
BLIND = "cannot_see_input"  # a node offering this resource plays one that lacks the input's mount


@pytest.fixture
def head_only():
    """A fresh loopback cluster: the head alone, 1 CPU (and the writer resource of the kinetics config)."""
    if ray.is_initialized():
        ray.shutdown()
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False,
                                                           "resources": {"shard_writer": 4}})
    ray.init(address=cluster.address, log_to_driver=False)
    yield cluster
    ray.shutdown()
    cluster.shutdown()


@pytest.fixture(scope="module")
def many_videos(tmp_path_factory):
    """24 short videos: enough work that nodes joining after the start still get some."""
    return motion.make_motion_dataset(tmp_path_factory.mktemp("many"), per_class=6, num_frames=16, size=(64, 48),
                                      speed=2.0)


def _cfg(samples=4, algorithm="farneback"):
    return BuildConfig(worker=WorkerConfig(decode=DecodeConfig(resize="none"),
                                           flow=FlowConfig(algorithm=algorithm),
                                           sample=SampleConfig(chunk_frames=4)),
                       shard=ShardConfig(max_samples=samples))


def _files(root):
    return {p.relative_to(root): p.read_bytes() for p in root.rglob("*") if p.is_file() and ".flowshard" not in p.parts}


def _in_thread(fn):
    errors: list = []

    def run():
        try:
            errors.append(fn())
        except Exception as exc:  # noqa: BLE001 - handed to the test, which raises it
            errors.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, errors


def _blind_view(hidden):
    """A path view in which every node offering BLIND lacks the folder `hidden`."""
    def view(node, path):
        blind = any(n["NodeID"] == node and n["Resources"].get(BLIND) for n in ray.nodes())
        return path.replace(str(hidden), f"{hidden}-not-on-this-node") if blind else path

    return view


def test_nodes_joining_mid_build_take_work_and_a_blind_one_is_named(many_videos, tmp_path, head_only, caplog):
    cluster = head_only
    executor = RayExecutor(address=cluster.address, path_view=_blind_view(many_videos), refresh_s=0.3)
    out = tmp_path / "ds"
    with caplog.at_level("INFO", logger="pipeline.cluster.scheduler"):
        # TV-L1 (about 20 times Farneback's cost): enough work left for the nodes that join, on any machine.
        thread, result = _in_thread(lambda: build_dataset(str(many_videos), str(out), _cfg(algorithm="tvl1"),
                                                          executor=executor, progress=False))
        deadline = time.time() + 60
        while not executor.placement["flow"]:  # the build runs on the head alone
            assert time.time() < deadline and thread.is_alive(), result
            time.sleep(0.05)
        # The blind node first: it must join (and be checked) while work is left, whatever the
        # machine's speed; the node that sees everything joins after it and takes work.
        blind = cluster.add_node(num_cpus=1, resources={BLIND: 1})
        joined = cluster.add_node(num_cpus=1)
        thread.join(timeout=240)
    assert not thread.is_alive() and not isinstance(result[0], Exception), result
    assert result[0].ok == 24 and result[0].errors == 0  # nothing lost
    placed = executor.placement["decode"] + executor.placement["flow"]
    assert placed[joined.node_id] > 0, placed  # the later node took work
    assert blind.node_id not in placed  # the blind one never did
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any(blind.node_id[:12] in w and "gets no work" in w and "shared mount" in w for w in warnings), warnings
    build_dataset(str(many_videos), str(tmp_path / "local"), _cfg(algorithm="tvl1"), progress=False)
    assert _files(out) == _files(tmp_path / "local")


def test_kinetics_config_waits_for_its_flow_node_and_clears_its_requests(motion_videos, tmp_path, head_only,
                                                                         monkeypatch):
    """jobs/configs/kinetics400.yaml as shipped but for local INPUT/OUTPUT and the torch flow on
    a CPU actor: the build asks the autoscaler for a flow_gpu node, waits for it, then runs on
    it; its requests are withdrawn at the end."""
    from ray.autoscaler import sdk

    from jobs.build_dataset import load_job_config
    from jobs.commands.build import run_build

    cluster = head_only
    asked: list = []
    real = sdk.request_resources

    def record(num_cpus=None, bundles=None, **kw):
        asked.append((num_cpus, list(bundles or [])))
        return real(num_cpus=num_cpus, bundles=bundles, **kw)

    monkeypatch.setattr(sdk, "request_resources", record)
    made: list = []
    init = scheduler.Scheduler.__init__

    def keep(self, ctx):
        init(self, ctx)
        made.append(self)

    monkeypatch.setattr(scheduler.Scheduler, "__init__", keep)
    job = load_job_config(ROOT / "jobs" / "configs" / "kinetics400.yaml", {
        "input": str(motion_videos), "output": str(tmp_path / "k400"), "address": cluster.address,
        "flow_device": "cpu", "flow_actors": 1, "resize": "none"})
    assert (job["options"]["actor_resource"], job["options"]["writer_resource"]) == ("flow_gpu", "shard_writer")
    thread, result = _in_thread(lambda: run_build(job["input"], job["output"], job["options"]))
    deadline = time.time() + 120
    while not any({"flow_gpu": 1} in bundles for _, bundles in asked):  # the build asks for its flow node
        assert time.time() < deadline and thread.is_alive(), result
        time.sleep(0.1)
    time.sleep(1.0)
    assert thread.is_alive()  # ... and waits for it
    flow_node = cluster.add_node(num_cpus=1, resources={"flow_gpu": 1})
    thread.join(timeout=200)
    assert not thread.is_alive() and not isinstance(result[0], Exception), result
    assert result[0].ok == 8
    assert {node.id for _, node in made[0].actors} == {flow_node.node_id}
    assert set(made[0].placement["flow"]) == {flow_node.node_id}
    assert asked[-1] == (0, [])  # cleared when the build ended
    assert any(cpus and cpus >= 8 for cpus, _ in asked)  # a CPU per video left was asked for


def _killing(monkeypatch, should_kill):
    """Kill a writer's process (SIGKILL, as the OOM killer does) after a `take` call it answered
    when `should_kill(scheduler, unit)` says so; returns the list of (unit, pid) killed."""
    killed: list = []
    dead: list = []
    original = scheduler.Scheduler._call_done

    def call_done(self, ref, what, name, writer, chunks):
        original(self, ref, what, name, writer, chunks)
        a = self.active.get(name)
        if what == "take" and a is not None and a.writer is writer and writer not in dead \
                and should_kill(self, a, killed):
            pid = ray.get(writer.pid.remote())
            os.kill(pid, signal.SIGKILL)
            dead.append(writer)  # answers it gave before it died may still come
            killed.append((name, pid))
            call_done.scheduler = self

    monkeypatch.setattr(scheduler.Scheduler, "_call_done", call_done)
    return killed, call_done


def test_a_killed_writer_is_replaced_from_its_spool(motion_videos, tmp_path, head_only, monkeypatch, caplog):
    cluster = head_only
    cfg = _cfg(samples=8)  # one unit of all 8 videos
    killed, hook = _killing(monkeypatch, lambda s, a, killed: not killed and a.left <= 4)
    executor = RayExecutor(address=cluster.address, max_videos=2)
    with caplog.at_level("INFO", logger="pipeline.cluster.scheduler"):
        summary = build_dataset(str(motion_videos), str(tmp_path / "ds"), cfg, executor=executor, progress=False)
    assert len(killed) == 1 and summary.ok == 8 and summary.errors == 0
    assert any("takes over its spool" in r.getMessage() for r in caplog.records)
    # The videos the spool held complete were not computed again: 8 tries and the few in flight.
    assert hook.scheduler.tries <= 8 + 2, hook.scheduler.tries
    build_dataset(str(motion_videos), str(tmp_path / "local"), cfg, progress=False)
    assert _files(tmp_path / "ds") == _files(tmp_path / "local")
    tag = spool_tag(str(tmp_path / "ds"))  # every run of this OUTPUT
    assert not list(Path(tempfile.gettempdir()).glob(f"flowshard-spool-{tag}-*"))  # no spool left


def test_a_unit_whose_writers_keep_dying_becomes_transient_error_rows(motion_videos, tmp_path, head_only,
                                                                      monkeypatch):
    cluster = head_only
    cfg = _cfg(samples=4)  # two units
    doomed: list = []

    def should_kill(s, a, killed):
        doomed[:] = doomed or [a.unit.name]
        return a.unit.name == doomed[0]

    killed, _ = _killing(monkeypatch, should_kill)
    summary = build_dataset(str(motion_videos), str(tmp_path / "ds"), cfg,
                            executor=RayExecutor(address=cluster.address, max_videos=2), progress=False)
    assert len(killed) == scheduler.MAX_ATTEMPTS
    rows = list(open_dataset(tmp_path / "ds").videos(include_errors=True))
    errors = [r for r in rows if r.status != "ok"]
    assert summary.ok == 4 and len(errors) == 4  # the other unit is whole
    assert all(r.error_kind == "transient" and "writer lost" in r.error for r in errors)


def test_wait_for_cluster_asks_waits_and_times_out(monkeypatch):
    """--min-nodes/--min-cpus/--min-gpus: a clear wait, the request, then a timeout naming the sizes."""
    sizes = iter([(1, 4, 0.0), (1, 4, 0.0), (3, 68, 1.0)])
    asked: list = []
    monkeypatch.setattr(nodes, "cluster_size", lambda: next(sizes))
    monkeypatch.setattr(nodes, "request", lambda cpus, bundles: asked.append((cpus, bundles)))
    clock = iter(range(100)).__next__
    nodes.wait_for_cluster(RayConfig(min_nodes=3, min_cpus=64, min_gpus=1, min_wait_s=10), clock=clock,
                           sleep=lambda s: None)
    assert asked == [(64, [{"GPU": 1}])]
    monkeypatch.setattr(nodes, "cluster_size", lambda: (1, 4, 0.0))
    with pytest.raises(RuntimeError, match=r"did not reach 3 node\(s\), 64 CPU\(s\), 1 GPU\(s\) within 2 s .*"
                                           r"it has 1 node\(s\), 4 CPU\(s\), 0 GPU\(s\)"):
        nodes.wait_for_cluster(RayConfig(min_nodes=3, min_cpus=64, min_gpus=1, min_wait_s=2),
                               clock=iter(range(100)).__next__, sleep=lambda s: None)
    assert asked[-1] == (0, [])  # a timed-out wait withdraws its request


@pytest.mark.timeout(300)
def test_scheduler_bench_runs_at_small_scale():
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.run([sys.executable, "bench/scheduler_scale.py", "--cpus", "4", "16", "--min-videos", "120",
                           "--videos-per-cpu", "1", "--servers", "2"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=280)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "| 16 | 120 |" in proc.stdout and "growth of driver CPU per video" in proc.stdout


def test_units_wait_when_the_last_writer_node_goes_and_finish_on_the_next(motion_videos, tmp_path, head_only,
                                                                          caplog):
    """Writers may only run on nodes offering `spot_writer`, and the one such node goes (a
    preemption) while it writes: its units wait in the queue (the build does not fail) and
    finish on the writer node that joins next, in the same run, equal to a clean build."""
    cluster = head_only
    writer_node = cluster.add_node(num_cpus=1, resources={"spot_writer": 4})
    cluster.wait_for_nodes()
    executor = RayExecutor(address=cluster.address, writer_resource="spot_writer", max_videos=2, refresh_s=0.3)
    out = tmp_path / "ds"
    with caplog.at_level("WARNING", logger="pipeline.cluster.scheduler"):
        thread, result = _in_thread(lambda: build_dataset(str(motion_videos), str(out), _cfg(samples=4),
                                                          executor=executor, progress=False))
        deadline = time.time() + 60
        while not executor.placement["flow"]:  # units are open on the writer node, videos started
            assert time.time() < deadline and thread.is_alive(), result
            time.sleep(0.02)
        cluster.remove_node(writer_node)
        deadline = time.time() + 60
        while not any("no node can hold a writer now" in r.getMessage() for r in caplog.records):
            assert time.time() < deadline and thread.is_alive(), result
            time.sleep(0.05)
        cluster.add_node(num_cpus=1, resources={"spot_writer": 4})
        thread.join(timeout=240)
    assert not thread.is_alive() and not isinstance(result[0], Exception), result
    assert result[0].ok == 8 and result[0].errors == 0
    build_dataset(str(motion_videos), str(tmp_path / "local"), _cfg(samples=4), progress=False)
    assert _files(out) == _files(tmp_path / "local")
