"""Does every node of a cluster see the build's local INPUT and OUTPUT? Checked before any work.

Decode tasks run on every node and writers wherever Ray places them. A local path that only
the driver's machine has would turn into "file not found" error rows on the other nodes,
and shards written there would land on their local disks. So before a multi-node build the
driver writes a probe file into OUTPUT (a random token) and picks a few input videos (size
known); a task pinned to each node reads the probe and looks at those videos. A node that
does not see them stops the build with the fix: object storage (s3://...) or a mount that
every node has at the same path. Object-storage locations need no check.

No Ray here: a task of `pipeline.cluster.tasks` runs `look` on each node.
"""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass

from pipeline import storage
from pipeline.records import VideoRef
from pipeline.storage import Location

PROBE_PREFIX = "probe-"
SAMPLE_VIDEOS = 16  # input videos looked at on each node, spread over the sorted list


@dataclass(frozen=True)
class Check:
    """One thing a node must see: `path`, holding `token` (a probe) or of `size` bytes (an input)."""

    what: str  # "INPUT" or "OUTPUT"
    path: str
    token: str | None = None
    size: int | None = None


def plan(refs: list[VideoRef], output: Location, state_dir: Location) -> list[Check]:
    """The checks for a build, writing OUTPUT's probe file; [] when nothing is local."""
    checks = []
    local = [r for r in refs if not storage.is_remote(r.uri)]
    step = max(1, len(local) // SAMPLE_VIDEOS)
    for ref in local[::step][:SAMPLE_VIDEOS]:
        size = storage.size(ref.uri)
        if size is not None:  # missing on the driver too: an error row anyway, not a cluster problem
            checks.append(Check(what="INPUT", path=ref.uri, size=size))
    if not storage.is_remote(output):
        token = uuid.uuid4().hex
        probe = storage.join(state_dir, f"{PROBE_PREFIX}{token}")
        storage.write_bytes_atomic(probe, token.encode())
        checks.append(Check(what="OUTPUT", path=str(probe), token=token))
    return checks


def look(checks: list[Check]) -> list[Check]:
    """The checks this machine fails: a probe it cannot read, or an input it does not see whole."""
    failed = []
    for c in checks:
        try:
            if c.token is not None:
                with open(c.path, "rb") as f:
                    ok = f.read() == c.token.encode()
            else:
                ok = os.path.getsize(c.path) == c.size
        except OSError:
            ok = False
        if not ok:
            failed.append(c)
    return failed


def clean(checks: list[Check]) -> None:
    """Remove the probe files `plan` wrote."""
    for c in checks:
        if c.token is not None:
            storage.remove(c.path)


def refusal(node: str, failed: list[Check], input_path: str, output: Location) -> str:
    """The message that stops the build: what the node cannot see, and the fix."""
    whats = sorted({c.what for c in failed})
    where = {
        "INPUT": f"INPUT {input_path} (e.g. {next(c.path for c in failed if c.what == 'INPUT')})"
        if "INPUT" in whats
        else "",
        "OUTPUT": f"OUTPUT {output}",
    }
    seen = " and ".join(where[w] for w in whats)
    return (
        f"{seen} is a local path that node {node} cannot see: on a multi-node Ray cluster the build's "
        f"INPUT and OUTPUT must be on storage every node sees. Use object storage (s3://bucket/prefix, "
        f"any fsspec URL) or a shared mount (NFS, ...) at the same path on every node."
    )
