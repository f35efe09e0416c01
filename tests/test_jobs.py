"""Job entrypoints: named configs load, and a job runs end to end and prints its summary."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from jobs.build_dataset import load_job_config
from jobs.commands.build import make_build_config

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "jobs" / "configs").glob("*.yaml"))


def test_named_configs_exist_for_the_three_datasets():
    assert {p.stem for p in CONFIGS} >= {"ucf101", "hmdb51", "kinetics400"}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_named_config_gives_a_valid_build_config(path):
    job = load_job_config(path)
    cfg = make_build_config(job["options"])
    assert cfg.worker.flow.algorithm == "tvl1" and cfg.worker.flow.backend == "torch"
    assert job["name"] and job["input"].startswith("s3://")


def test_unknown_option_is_named(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"input": "a", "output": "b", "build": {"flw": "tvl1"}}))
    with pytest.raises(ValueError, match="flw"):
        load_job_config(bad)


def test_job_runs_and_ends_with_a_json_summary(motion_videos, tmp_path):
    cfg = tmp_path / "job.yaml"
    cfg.write_text(yaml.safe_dump({"name": "tiny", "input": str(motion_videos), "output": str(tmp_path / "out"),
                                   "build": {"flow": "dis", "resize": "none", "executor": "local",
                                             "flow_param": {"preset": "fast"}}}))
    proc = subprocess.run([sys.executable, "-m", "jobs.build_dataset", "--config", str(cfg), "--set", "seed=3"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    record = json.loads(proc.stdout.strip().splitlines()[-1])
    assert record["job"] == "tiny" and record["ok"] == 8 and record["errors"] == 0
    assert len(record["version"]) >= 12 and record["pairs_per_second"] > 0
    assert "job tiny done" in proc.stderr
    info = json.loads((tmp_path / "out" / "dataset.json").read_text())
    assert info["config"]["shard"]["seed"] == 3 and info["config"]["flow"]["params"]["preset"] == "fast"


def test_raft_is_selectable_from_the_cli_options():
    from jobs.commands.build import build, option_defaults

    o = {**option_defaults(build), "flow_algo": "raft_small", "flow_param": ("weights=/models/raft_small.pth",)}
    cfg = make_build_config(o)
    flow = cfg.worker.flow
    assert (flow.algorithm, flow.backend, flow.params.weights) == ("raft_small", "torch", "/models/raft_small.pth")


def test_build_checks_inputs_before_starting_ray(tmp_path, monkeypatch):
    """A default build (tvl1, --flow-device auto) on a bad input fails on the input, and never
    starts Ray: the local GPU count comes from Ray's detector without a Ray instance."""
    import ray
    from click.testing import CliRunner

    from jobs.cli import cli
    from pipeline.cluster import startup

    monkeypatch.setattr(ray, "is_initialized", lambda: False)  # as in a fresh `flowshard build`
    monkeypatch.setattr(ray, "init", lambda *a, **k: pytest.fail("Ray started before the inputs were checked"))
    result = CliRunner().invoke(cli, ["build", str(tmp_path / "missing"), str(tmp_path / "out"), "--no-progress"])
    assert result.exit_code != 0 and "missing" in (result.output + str(result.exception))
    gpus = startup.local_gpus()
    assert gpus is not None and gpus >= 0 and startup.cluster_gpus(startup.RayConfig()) == gpus
