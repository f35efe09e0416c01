"""The only Ray-aware code of the pipeline: start-up and environment, remote tasks and actors,
the scheduler and the executor that runs a build's units on Ray.

    startup.py       RayConfig; start or join Ray; GPUs a cluster offers
    env.py           the storage settings Ray workers get, secrets stripped
    tasks.py         the remote functions (plan, decode, flow, encode) and the flow actor
    nodes.py         the cluster as the build runs: nodes joining and leaving, their checks, the autoscaler
    scheduler.py     the driver loop: units, videos and chunks in flight, retries, writers taken over
    executor.py      RayExecutor, what the build calls
    shared_paths.py  does every node see INPUT and OUTPUT (no Ray)
"""

import os

# Set before any module of this package imports Ray: a local Ray then binds to loopback.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
