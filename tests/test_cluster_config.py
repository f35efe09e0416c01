"""ray_cluster.yaml passes Ray's own cluster-config validation (no cloud contacted)."""
from pathlib import Path

import yaml
from ray.autoscaler._private.commands import prepare_config
from ray.autoscaler._private.util import validate_config

ROOT = Path(__file__).resolve().parents[1]


def _config():
    return yaml.safe_load((ROOT / "ray_cluster.yaml").read_text())


def test_cluster_yaml_is_valid_for_ray():
    validate_config(prepare_config(_config()))


def test_cluster_has_cpu_and_gpu_workers_with_autoscaling_bounds():
    types = _config()["available_node_types"]
    assert {"head", "cpu_worker", "gpu_worker"} <= set(types)
    for name in ("cpu_worker", "gpu_worker"):
        assert 0 <= types[name]["min_workers"] < types[name]["max_workers"]
    assert "flow_gpu" in types["gpu_worker"]["resources"]


def test_token_auth_on_and_dashboard_on_loopback():
    cfg = _config()
    starts = " ".join(cfg["head_start_ray_commands"] + cfg["worker_start_ray_commands"])
    assert starts.count("RAY_AUTH_MODE=token") == 2
    assert "--dashboard-host=127.0.0.1" in starts and "0.0.0.0" not in starts
    assert "~/.ray/auth_token" in cfg["file_mounts"]
    assert any("pip install" in c and "flowshard" in c for c in cfg["setup_commands"])


def test_kinetics_config_places_its_work_on_node_types_the_cluster_offers():
    """The shipped kinetics400 config routes flow actors and writers by resources that node
    types of the shipped cluster offer; writers go to on-demand nodes (a spot loss costs units)."""
    build = yaml.safe_load((ROOT / "jobs" / "configs" / "kinetics400.yaml").read_text())["build"]
    types = _config()["available_node_types"]
    offering = {name: t for name, t in types.items() if build["writer_resource"] in t.get("resources", {})}
    assert offering and all("InstanceMarketOptions" not in t["node_config"] for t in offering.values())
    assert build["actor_resource"] in types["gpu_worker"]["resources"]
