"""The cluster as a build sees it while it runs: nodes that join and leave, each checked the
first time it would take work, and what the build asks of the autoscaler.

A node is CHECKING from the moment the driver first sees it until a task pinned to it has
looked at INPUT and OUTPUT and the tools it runs (`pipeline.cluster.tasks._look`); then GOOD
(it takes work) or BAD (it never does: a warning names it and the fix). Work is placed with
`NodeAffinitySchedulingStrategy` on GOOD nodes only, so a node that joins late, or that
cannot see the build's files, never runs a task of it by accident. A node that gets a drain
notice (a spot preemption, a scale-down) takes no new work from then on.

The autoscaler sees the build's demand through `ray.autoscaler.sdk.request_resources` (the
size the cluster should have, replaced at every change and cleared when the build ends), so
a head-only cluster grows to what the videos left can use.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from pipeline.cluster import shared_paths
from pipeline.cluster.startup import RayConfig

log = logging.getLogger(__name__)

CHECKING, GOOD, BAD = "checking", "good", "bad"
VIDEOS_PER_ACTOR = 100  # videos left per flow actor asked of the autoscaler
UNBOUNDED = 1 << 30


@dataclass
class Node:
    """One node of the cluster and the build's work on it."""

    id: str
    address: str
    resources: Mapping[str, float]
    state: str = CHECKING
    alive: bool = True
    draining: bool = False  # a drain notice came (a preemption, a scale-down): it takes no new work
    open: int = 0  # videos decoding there
    writers: int = 0
    actors: int = 0

    @property
    def leaving(self) -> bool:
        """Gone, or going (a drain notice): work lost with it is the machine's failure."""
        return not self.alive or self.draining

    @property
    def cpus(self) -> int:
        return int(self.resources.get("CPU", 0))

    @property
    def name(self) -> str:
        return f"{self.address} (node {self.id[:12]})"

    def pin(self) -> NodeAffinitySchedulingStrategy:
        """The scheduling strategy that runs a task or actor here and nowhere else."""
        return NodeAffinitySchedulingStrategy(node_id=self.id, soft=False)


def alive_nodes() -> dict[str, dict]:
    """Ray's record of every live node, by node id."""
    return {n["NodeID"]: n for n in ray.nodes() if n.get("Alive")}


def draining_nodes() -> dict[str, int]:
    """The nodes Ray has been asked to drain (a spot preemption notice, the autoscaler's
    scale-down), by node id: the deadline in ms since the epoch (0: none). {} where this Ray
    cannot say; the build then learns of a drain when a task is refused there."""
    try:
        client = ray._private.worker.global_worker.gcs_client  # type: ignore[attr-defined]
        return {str(k): int(v) for k, v in client.get_draining_nodes().items()}
    except Exception as exc:  # a private API: its absence must not stop a build
        log.debug("could not read the draining nodes: %s", exc)
        return {}


class NodeTable:
    """The nodes seen so far, their states and the work placed on each."""

    def __init__(self, checked: bool) -> None:
        self.checked = checked  # False: a local Ray on this machine, nothing to check
        self.nodes: dict[str, Node] = {}

    def refresh(self) -> tuple[list[Node], list[Node]]:
        """Read the live nodes: (nodes seen for the first time, nodes gone since the last read)."""
        alive = alive_nodes()
        joined = []
        for node_id, info in alive.items():
            node = self.nodes.get(node_id)
            if node is None:
                node = Node(
                    id=node_id,
                    address=info["NodeManagerAddress"],
                    resources=dict(info["Resources"]),
                    state=CHECKING if self.checked else GOOD,
                )
                self.nodes[node_id] = node
                joined.append(node)
            node.resources = dict(info["Resources"])
        left = [n for n in self.nodes.values() if n.alive and n.id not in alive]
        for n in left:
            n.alive = False
        return joined, left

    def read_draining(self) -> list[tuple[Node, int]]:
        """Mark the live nodes that got a drain notice since the last read: (node, deadline in
        ms since the epoch, 0 for none) of each."""
        out = []
        for node_id, deadline in draining_nodes().items():
            node = self.nodes.get(node_id)
            if node is not None and node.alive and not node.draining:
                node.draining = True
                out.append((node, deadline))
        return out

    def good(self) -> list[Node]:
        """The nodes that take new work: checked, alive and not draining."""
        return [n for n in self.nodes.values() if n.alive and n.state == GOOD and not n.draining]

    def cpus(self) -> int:
        """CPUs of the GOOD nodes."""
        return sum(n.cpus for n in self.good())

    def is_usable(self, node_id: str | None) -> bool:
        node = self.nodes.get(node_id or "")
        return node is not None and node.alive and node.state == GOOD and not node.draining

    def video_node(self, slots: Callable[[Node], int]) -> Node | None:
        """The GOOD node with the most room for another video (`slots(node)` videos each), or None."""
        best, room = None, 0.0
        for n in self.good():
            total = slots(n)
            free = (total - n.open) / total if total else 0.0
            if free > room:
                best, room = n, free
        return best

    def writer_node(self, resource: str | None) -> Node | None:
        """The GOOD node (offering `resource`, if given) holding the fewest writers, or None."""
        fits = [n for n in self.good() if resource is None or n.resources.get(resource, 0) >= n.writers + 1]
        return min(fits, key=lambda n: n.writers, default=None)

    def all_bad(self) -> bool:
        """Every node seen is BAD (or gone): nothing can ever run."""
        return bool(self.nodes) and not any(n.alive and n.state in (GOOD, CHECKING) for n in self.nodes.values())


def actor_slots(node: Node, cfg: RayConfig) -> int:
    """Flow actors `node` can hold: by its GPUs and the routing resource; UNBOUNDED if neither is asked."""
    caps = []
    if cfg.actor_resource:
        caps.append(int(node.resources.get(cfg.actor_resource, 0)))
    if cfg.actor_gpus:
        caps.append(int(node.resources.get("GPU", 0) / cfg.actor_gpus + 1e-9))
    return min(caps) if caps else UNBOUNDED


def node_problem(seen: dict, tools: Mapping[str, str], input_path: str, output) -> str | None:
    """Why a node may not take work, from what its `_look` task saw; None when it may."""
    if seen["failed"]:
        return shared_paths.refusal(seen["name"], seen["failed"], input_path, output)
    differ = {k: (seen["tools"].get(k), v) for k, v in sorted(tools.items()) if seen["tools"].get(k) != v}
    if differ:
        return (
            f"node {seen['name']} runs other tools than this driver "
            f"({', '.join(f'{k} {a} there, {b} here' for k, (a, b) in differ.items())}): one version's "
            f"bytes must come from one set of tools; install the same versions on every node and the driver"
        )
    return None


def actor_bundle(cfg: RayConfig) -> dict[str, float]:
    """The resources one flow actor asks for beyond CPU ({} when it needs nothing special)."""
    bundle: dict[str, float] = {}
    if cfg.actor_gpus:
        bundle["GPU"] = cfg.actor_gpus
    if cfg.actor_resource:
        bundle[cfg.actor_resource] = 1
    return bundle


def demand(cfg: RayConfig, videos_left: int, actors: int, writers: int) -> tuple[int, list[dict]]:
    """What to ask of the autoscaler: (CPUs, other bundles) for `videos_left` videos, `actors`
    flow actors wanted (-1: one per VIDEOS_PER_ACTOR videos left) and `writers` writers."""
    bundles: list[dict] = []
    if actors and actor_bundle(cfg):
        wanted = actors if actors > 0 else math.ceil(videos_left / VIDEOS_PER_ACTOR)
        bundles += [actor_bundle(cfg)] * min(wanted, cfg.request_actors)
    if cfg.writer_resource:
        bundles += [{cfg.writer_resource: 1}] * writers
    return min(videos_left, cfg.request_cpus), bundles


def request(num_cpus: int, bundles: list[dict]) -> None:
    """Ask the autoscaler for a cluster that fits `num_cpus` CPUs and `bundles` (replacing the
    build's last request; 0 and [] clear it). Only a hint: without an autoscaler nothing happens."""
    from ray.autoscaler import sdk

    sdk.request_resources(num_cpus=num_cpus, bundles=bundles)


def cluster_size() -> tuple[int, int, float]:
    """(live nodes, CPUs, GPUs) of the cluster now."""
    alive = alive_nodes()
    cpus = sum(n["Resources"].get("CPU", 0) for n in alive.values())
    gpus = sum(n["Resources"].get("GPU", 0) for n in alive.values())
    return len(alive), int(cpus), float(gpus)


def _size_text(nodes: int, cpus: int, gpus: float) -> str:
    return f"{nodes} node(s), {cpus} CPU(s), {gpus:g} GPU(s)"


def wait_for_cluster(
    cfg: RayConfig, *, clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep
) -> None:
    """Wait until the cluster has `cfg.min_nodes` nodes, `min_cpus` CPUs and `min_gpus` GPUs
    (asking the autoscaler for them), at most `cfg.min_wait_s` seconds; RuntimeError after that."""
    if not (cfg.min_nodes or cfg.min_cpus or cfg.min_gpus):
        return
    want = _size_text(cfg.min_nodes, cfg.min_cpus, cfg.min_gpus)
    deadline = clock() + cfg.min_wait_s
    waited = False
    while True:
        nodes, cpus, gpus = cluster_size()
        if nodes >= cfg.min_nodes and cpus >= cfg.min_cpus and gpus >= cfg.min_gpus:
            if waited:
                log.info("the Ray cluster has reached %s", _size_text(nodes, cpus, gpus))
            return
        if not waited:
            waited = True
            request(cfg.min_cpus, [{"GPU": 1}] * math.ceil(cfg.min_gpus))
            log.info(
                "waiting up to %.0f s for the Ray cluster to reach %s (it has %s; asked the autoscaler for them)",
                cfg.min_wait_s,
                want,
                _size_text(nodes, cpus, gpus),
            )
        if clock() >= deadline:
            request(0, [])
            raise RuntimeError(
                f"the Ray cluster did not reach {want} within {cfg.min_wait_s:.0f} s (it has "
                f"{_size_text(nodes, cpus, gpus)}): start more nodes (the autoscaler's max_workers in "
                f"ray_cluster.yaml, or `ray start` on more machines), or lower --min-nodes/--min-cpus/"
                f"--min-gpus, or wait longer with --min-wait"
            )
        sleep(min(1.0, max(0.0, deadline - clock())))
