"""Multi-node builds on a loopback Ray cluster: placement of flow actors, byte identity."""
import contextlib
import logging
import os
import threading
import time

import pytest
from click.testing import CliRunner

from jobs.cli import cli
from pipeline import open_dataset
from pipeline.build.config import BuildConfig, ShardConfig
from pipeline.build.run import build_dataset
from pipeline.decode import DecodeConfig
from pipeline.flow.config import FlowConfig
from pipeline.stages.config import SampleConfig, WorkerConfig

ray = pytest.importorskip("ray")
from ray.cluster_utils import Cluster  # noqa: E402
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy  # noqa: E402

from pipeline.cluster.executor import RayExecutor  # noqa: E402

FLOW_RESOURCE = "flow_worker"


@pytest.fixture(scope="module")
def two_nodes():
    """Head (1 CPU) + a worker node (1 CPU) advertising the resource that routes flow actors."""
    if ray.is_initialized():
        ray.shutdown()
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    worker = cluster.add_node(num_cpus=2, resources={FLOW_RESOURCE: 1})
    ray.init(address=cluster.address, log_to_driver=False)
    yield cluster, worker
    ray.shutdown()
    cluster.shutdown()


def _cfg(backend="opencv", algo="farneback"):
    return BuildConfig(worker=WorkerConfig(decode=DecodeConfig(resize="none"),
                                           flow=FlowConfig(algorithm=algo, backend=backend, batch_size=8),
                                           sample=SampleConfig(chunk_frames=4)),
                       shard=ShardConfig(max_samples=3))


def _files(root):
    return {p.relative_to(root): p.read_bytes() for p in root.rglob("*") if p.is_file() and ".flowshard" not in p.parts}


def test_flow_actors_only_on_the_flow_node_and_output_equals_local(motion_videos, tmp_path, two_nodes):
    cluster, worker_node = two_nodes
    executor = RayExecutor(address=cluster.address, flow_actors=1, actor_resource=FLOW_RESOURCE, chunks_per_call=3)
    summary = build_dataset(str(motion_videos), str(tmp_path / "ray"), _cfg(), executor=executor, progress=False)
    assert summary.ok == 8 and summary.errors == 0
    assert set(executor.placement["flow"]) == {worker_node.node_id}  # flow work only where routed
    assert len(executor.placement["decode"]) == 2  # decode spread over both nodes
    build_dataset(str(motion_videos), str(tmp_path / "local"), _cfg(), progress=False)
    assert _files(tmp_path / "ray") == _files(tmp_path / "local")


def test_torch_tvl1_in_actors_equals_in_process(motion_videos, tmp_path, two_nodes):
    pytest.importorskip("pipeline.flow.tvl1_torch")
    cluster, worker_node = two_nodes
    cfg = _cfg(backend="torch", algo="tvl1")
    executor = RayExecutor(address=cluster.address, flow_actors=1, actor_resource=FLOW_RESOURCE)
    build_dataset(str(motion_videos), str(tmp_path / "ray"), cfg, executor=executor, progress=False)
    assert set(executor.placement["flow"]) == {worker_node.node_id}
    build_dataset(str(motion_videos), str(tmp_path / "local"), cfg, progress=False)
    assert _files(tmp_path / "ray") == _files(tmp_path / "local")


def test_cli_routes_flow_to_the_actor_resource(motion_videos, tmp_path, two_nodes):
    cluster, _ = two_nodes
    result = CliRunner().invoke(cli, ["build", str(motion_videos), str(tmp_path / "ds"), "--flow", "dis",
                                      "--resize", "none", "--address", cluster.address, "--flow-actors", "1",
                                      "--actor-resource", FLOW_RESOURCE, "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "8 of 8 videos ok" in result.output


def _opts(**over):
    from jobs.commands.build import build, option_defaults

    return {**option_defaults(build, progress=False), **over}


def test_auto_device_stays_on_cpu_without_gpus(two_nodes):
    from jobs.commands.build import resolve_auto_device

    cluster, _ = two_nodes
    assert resolve_auto_device(_opts(address=cluster.address))["flow_device"] == "cpu"
    assert resolve_auto_device(_opts(executor="local"))["flow_device"] == "cpu"  # no Ray asked


@ray.remote(num_cpus=0)
def _sleep(seconds: float, started: str) -> None:
    open(started, "w").close()
    time.sleep(seconds)


@contextlib.contextmanager
def _build_with_an_extra_node(tmp_path, cluster, out, *, busy=False, **executor_options):
    """A build of 20 videos runs in a thread on `cluster` plus a node added for it; the body
    runs once that node has done work (so tasks on it are lost for real if it goes) and gets
    (extra node, errors the build raised, executor). Ends when the build does. busy: a task
    of no CPU runs on the node all along (Ray ends a drained node at once when it is idle,
    which it may be between two of the build's tasks)."""
    from pipeline.synthetic import motion

    # Enough videos that the extra node still gets some after its check (a task on it) is done.
    videos = motion.make_motion_dataset(tmp_path / "in", per_class=5, num_frames=16, size=(64, 48), speed=2.0)
    extra = cluster.add_node(num_cpus=2)
    cluster.wait_for_nodes()
    if busy:
        started = tmp_path / "busy"
        holder = _sleep.options(scheduling_strategy=NodeAffinitySchedulingStrategy(extra.node_id, soft=False)).remote(
            120, str(started))
        while not started.exists():
            time.sleep(0.02)
    errors: list[Exception] = []
    executor = RayExecutor(address=cluster.address, **executor_options)

    def run():
        try:
            build_dataset(str(videos), str(out), _cfg(), executor=executor, progress=False)
        except Exception as exc:  # noqa: BLE001 - the test reports whatever ended the run
            errors.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    deadline = time.time() + 120
    while extra.node_id not in executor.placement["decode"] + executor.placement["flow"]:
        assert time.time() < deadline and thread.is_alive(), "the extra node never got work"
        time.sleep(0.02)
    yield extra, errors, executor
    thread.join(timeout=300)
    if busy:
        ray.cancel(holder, force=True)
    assert not thread.is_alive()


def _equals_a_clean_build(tmp_path, out) -> None:
    assert open_dataset(out).info["counts"]["ok"] == 20
    build_dataset(str(tmp_path / "in"), str(tmp_path / "clean"), _cfg(), progress=False)
    assert _files(out) == _files(tmp_path / "clean")


def test_worker_node_removed_mid_build_loses_nothing(tmp_path, two_nodes):
    """A node dies while it runs decode and flow tasks: Ray retries them elsewhere (or a
    rerun resumes), and the result equals a build that never lost a node."""
    cluster, _ = two_nodes
    out = tmp_path / "lossy"
    with _build_with_an_extra_node(tmp_path, cluster, out) as (extra, errors, _):
        cluster.remove_node(extra)
    if errors:  # the first run may fail; the same command resumes it
        build_dataset(str(tmp_path / "in"), str(out), _cfg(), executor=RayExecutor(address=cluster.address),
                      progress=False)
    _equals_a_clean_build(tmp_path, out)


def test_a_preempted_node_loses_nothing_from_its_notice_to_its_end(tmp_path, two_nodes, caplog):
    """A spot node gets its preemption notice (Ray's drain request with a deadline, as the
    autoscaler sends it) while it runs the build's work, and is killed at the deadline: the
    driver reads the notice and gives the node no new work, what the node took with it starts
    again elsewhere without counting as a try, and the build ends in one run with every video
    stored, equal to a build that never lost a node."""
    from ray.core.generated import autoscaler_pb2

    cluster, _ = two_nodes
    out = tmp_path / "preempted"
    caplog.set_level(logging.WARNING, logger="pipeline.cluster.scheduler")
    with _build_with_an_extra_node(tmp_path, cluster, out, busy=True, refresh_s=0.5) as (extra, errors, _):
        notice_s = 3
        accepted, why = ray._raylet.GcsClient(address=cluster.address).drain_node(
            extra.node_id, autoscaler_pb2.DrainNodeReason.Value("DRAIN_NODE_REASON_PREEMPTION"),
            "spot instance reclaimed", int((time.time() + notice_s) * 1000))
        assert accepted, why
        time.sleep(notice_s)
        cluster.remove_node(extra)  # the cloud takes the machine at the deadline
    assert not errors, errors
    said = [r.getMessage() for r in caplog.records]
    assert any(f"node {extra.node_id[:12]}) got a drain notice" in m for m in said), said
    assert not any("trying again" in m for m in said), said  # no video lost a try to the node
    _equals_a_clean_build(tmp_path, out)


def test_auto_device_picks_cuda_actors_when_the_cluster_has_gpus(two_nodes):
    from jobs.commands.build import make_build_config, make_executor_from, resolve_auto_device

    cluster, _ = two_nodes
    cluster.add_node(num_cpus=1, num_gpus=1)  # declared GPU: enough to test the routing decision
    cluster.wait_for_nodes()
    o = resolve_auto_device(_opts(address=cluster.address))
    cfg = make_build_config(o)
    assert (o["flow_device"], cfg.worker.flow.backend, cfg.worker.flow.device) == ("cuda", "torch", "cuda")
    executor = make_executor_from(o, cfg.worker.flow.device)
    assert executor.cfg.flow_actors == -1 and executor.cfg.actor_gpus == 1.0  # one actor per GPU
    assert resolve_auto_device(_opts(address=cluster.address, flow_algo="farneback"))["flow_device"] == "cpu"


def test_storage_settings_reach_cluster_workers(two_nodes, monkeypatch):
    """The endpoint and storage options the driver uses are visible in remote tasks (keys are not)."""
    from pipeline.cluster.env import forwarded_env

    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "never-forwarded")
    env = forwarded_env()
    assert env["AWS_ENDPOINT_URL"] == "http://127.0.0.1:9" and "AWS_SECRET_ACCESS_KEY" not in env

    @ray.remote(num_cpus=0, runtime_env={"env_vars": env})
    def read_env():
        return os.environ.get("AWS_ENDPOINT_URL")

    assert ray.get(read_env.remote()) == "http://127.0.0.1:9"


# --- storage every node must see ------------------------------------------------------------

def _unseen_on(node_id, hidden):
    """A path view in which `node_id` does not have the folder `hidden` (the driver does):
    what a node of a real cluster sees of another machine's local disk."""
    def view(node, path):
        return path.replace(str(hidden), f"{hidden}-not-on-this-node") if node == node_id else path

    return view


def test_a_node_that_cannot_see_a_local_input_gets_no_work(motion_videos, tmp_path, two_nodes, caplog):
    """The node is named in a warning with the fix, runs nothing of the build, and the build
    completes on the nodes that see INPUT."""
    cluster, worker_node = two_nodes
    out = tmp_path / "ds"
    executor = RayExecutor(address=cluster.address, path_view=_unseen_on(worker_node.node_id, motion_videos))
    with caplog.at_level("WARNING", logger="pipeline.cluster.scheduler"):
        summary = build_dataset(str(motion_videos), str(out), _cfg(), executor=executor, progress=False)
    assert summary.ok == 8
    assert worker_node.node_id not in executor.placement["decode"] | executor.placement["flow"]
    text = " ".join(r.getMessage() for r in caplog.records if "gets no work" in r.getMessage())
    assert f"INPUT {motion_videos}" in text and worker_node.node_id[:12] in text
    assert "s3://" in text and "shared mount" in text and "OUTPUT" not in text.split("cannot see")[0]
    assert not list((out / ".flowshard").glob("probe-*"))  # the probe is cleaned up


def test_a_node_that_cannot_see_a_local_output_gets_no_work(motion_videos, tmp_path, two_nodes, caplog):
    cluster, worker_node = two_nodes
    out = tmp_path / "ds"
    executor = RayExecutor(address=cluster.address, path_view=_unseen_on(worker_node.node_id, out))
    with caplog.at_level("WARNING", logger="pipeline.cluster.scheduler"):
        summary = build_dataset(str(motion_videos), str(out), _cfg(), executor=executor, progress=False)
    assert summary.ok == 8
    assert worker_node.node_id not in executor.placement["decode"] | executor.placement["flow"]
    assert any(f"OUTPUT {out} is a local path that node" in r.getMessage() for r in caplog.records)


def test_nodes_with_other_tools_than_the_driver_are_refused(motion_videos, tmp_path, two_nodes, monkeypatch):
    from pipeline import tools

    cluster, _ = two_nodes
    monkeypatch.setattr(tools, "ffmpeg_version", lambda exe: "0.0-driver-only")  # this process only
    # Every node differs from the driver: no node may take work, and the build stops.
    with pytest.raises(RuntimeError, match=r"runs other tools than this driver \(ffmpeg .* there, 0.0-driver-only here"):
        build_dataset(str(motion_videos), str(tmp_path / "ds"), _cfg(), executor=RayExecutor(address=cluster.address),
                      progress=False)
