"""A Ray instance of the benchmark's own, kept running beside it: the "reused Ray" case.

`running_ray(cpus)` starts a local Ray in a child process and yields its address, which a
build reaches with `--address ADDRESS` exactly as a user reaches the instance that
`ray start --head` runs (with the idle-worker limit the README gives for it). The child shuts its own instance down when the block ends, so only
this benchmark's processes stop (never `ray stop`, which would stop every Ray of the machine,
and never address "auto", which picks the newest instance of the machine, whoever started it).
"""
from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from typing import Iterator

_CHILD = """
import os, sys
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
import ray
from pipeline.cluster.startup import local_system_config
cpus = int(sys.argv[1])
ctx = ray.init(address="local", num_cpus=cpus, include_dashboard=False, log_to_driver=False,
               _system_config=local_system_config(cpus))
print(ctx.address_info["gcs_address"], flush=True)
sys.stdin.read()
ray.shutdown()
"""


@contextlib.contextmanager
def running_ray(cpus: int) -> Iterator[str]:
    """Yield the GCS address of a local Ray with `cpus` CPUs that runs until the block ends.

    Ray starts local instances with token authentication; a process that connects by address
    (rather than "auto") must ask for it, so RAY_AUTH_MODE=token is set here for this process
    and the builds it runs (they then read the token Ray saved in ~/.ray).
    """
    os.environ.setdefault("RAY_AUTH_MODE", "token")
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [repo, os.environ.get("PYTHONPATH")]))}
    proc = subprocess.Popen([sys.executable, "-c", _CHILD, str(cpus)], stdin=subprocess.PIPE, env=env,
                            stdout=subprocess.PIPE, text=True)
    try:
        address = proc.stdout.readline().strip()
        if not address:
            raise RuntimeError("the benchmark's Ray instance did not start")
        yield address
    finally:
        proc.stdin.close()
        proc.wait(timeout=120)
