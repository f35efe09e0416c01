"""Pinned tools: one constraints file for the driver and the cluster's nodes."""
import re
from importlib import metadata
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
TOOLS = ("ray", "torch", "torchvision", "opencv-contrib-python-headless", "imageio-ffmpeg")


def _pins() -> dict[str, str]:
    pins = {}
    for line in (REPO / "constraints.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, sep, version = line.partition("==")
            assert sep, f"constraints.txt: {line!r} is not an exact pin"
            pins[name.strip().lower()] = version.strip()
    return pins


def test_every_tool_that_makes_bytes_is_pinned_exactly():
    assert set(TOOLS) <= set(_pins())


def test_cluster_nodes_install_with_the_constraints_and_no_other_ffmpeg():
    setup = yaml.safe_load((REPO / "ray_cluster.yaml").read_text())["setup_commands"]
    installs = [c for c in setup if "pip install" in c and "flowshard" in c]
    assert installs and all('-c "$HOME/flowshard/constraints.txt"' in c for c in installs)
    assert not any(re.search(r"apt(-get)? install.*\bffmpeg\b", c) for c in setup)


def test_the_ray_floor_is_the_pinned_minor_version():
    text = (REPO / "pyproject.toml").read_text()
    floor = re.search(r'"ray\[default\]>=([\d.]+)"', text).group(1)
    assert _pins()["ray"].startswith(floor)


def test_this_environment_runs_the_pinned_versions():
    """The environment tests run in is installed from the constraints (CI: pip install -c)."""
    differ = {name: (metadata.version(name), want) for name, want in _pins().items()
              if metadata.version(name) != want}
    assert not differ, f"installed vs constraints.txt: {differ}"
