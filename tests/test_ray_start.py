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
from pipeline.ray_runner import RayConfig, init_ray

init_ray(RayConfig(num_cpus=1))
print("REGION", ray.get(ray.remote(lambda: os.environ.get("AWS_REGION")).remote()),
      ray.get(ray.remote(lambda: os.environ.get("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER")).remote()))
ray.shutdown()
"""


def test_fresh_local_ray_workers_inherit_the_settings():
    """A private local Ray is started without a runtime_env (which would leave its prestarted
    workers unusable for the build); the settings still reach every worker."""
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "AWS_REGION")}
    env["PYTHONPATH"] = str(Path(__file__).resolve().parent.parent)
    out = subprocess.run([sys.executable, "-c", _SCRIPT], env=env, capture_output=True, text=True, timeout=300)
    assert "REGION eu-test-1 0" in out.stdout, out.stdout + out.stderr[-3000:]
