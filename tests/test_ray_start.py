"""The local Ray a build starts: its workers get the driver's storage settings by inheritance."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

_SCRIPT = """
import os
os.environ["AWS_REGION"] = "eu-test-1"
import ray
from pipeline.cluster.startup import RayConfig, init_ray

init_ray(RayConfig(num_cpus=1))
print("REGION", ray.get(ray.remote(lambda: os.environ.get("AWS_REGION")).remote()),
      ray.get(ray.remote(lambda: os.environ.get("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER")).remote()))
config = ray._private.worker._global_node._config
print("LEAN", config.get("enable_metrics_collection"), config.get("task_events_report_interval_ms"))
ray.shutdown()
"""


def test_fresh_local_ray_workers_inherit_the_settings():
    """A private local Ray is started without a runtime_env (which would leave its prestarted
    workers unusable for the build); the settings still reach every worker. It starts lean
    (no metrics, no task events: nobody reads them on a private instance), and Ray's own
    start-up and token lines stay out of the user's terminal."""
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "AWS_REGION")}
    env["PYTHONPATH"] = str(Path(__file__).resolve().parent.parent)
    out = subprocess.run([sys.executable, "-c", _SCRIPT], env=env, capture_output=True, text=True, timeout=300)
    assert "REGION eu-test-1 0" in out.stdout, out.stdout + out.stderr[-3000:]
    assert "LEAN False 0" in out.stdout
    assert "Started a local Ray instance" not in out.stderr and "Token authentication" not in out.stderr, out.stderr


_CHURN = """
import os, sys, time
import ray
from pipeline.cluster.startup import RayConfig, init_ray

if sys.argv[1] == "build":
    init_ray(RayConfig(num_cpus=1))
else:  # Ray's defaults, for contrast
    ray.init(address="local", num_cpus=1, include_dashboard=False, log_to_driver=False)

@ray.remote(num_cpus=1)
def flow():  # holds the only CPU, as flow tasks hold every CPU of a build
    time.sleep(8)

@ray.remote(num_cpus=0)
def decode():  # a zero-CPU task, as decoders and probes are
    return os.getpid()

busy = flow.remote()
first = ray.get(decode.remote())
time.sleep(3)  # idle for longer than Ray's one-second idle-worker threshold
second = ray.get(decode.remote())
print("REUSED", first == second)
ray.get(busy)
ray.shutdown()
"""


def _reused(mode: str) -> str:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["PYTHONPATH"] = str(Path(__file__).resolve().parent.parent)
    env["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    out = subprocess.run([sys.executable, "-c", _CHURN, mode], env=env, capture_output=True, text=True, timeout=300)
    assert "REUSED" in out.stdout, out.stdout + out.stderr[-3000:]
    return out.stdout


def test_build_ray_keeps_idle_decoder_workers_while_flow_holds_every_cpu():
    """Ray keeps only as many idle workers as free CPUs: with every CPU held by flow, an idle
    decoder's process is killed after a second and the next video pays a new one. The local
    Ray a build starts keeps them (contrast: Ray's defaults kill it)."""
    assert "REUSED True" in _reused("build")
    assert "REUSED False" in _reused("default")
