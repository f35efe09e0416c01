"""The estimator table is the single source of estimator names, backends, params and builds."""
from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from pipeline import tools
from pipeline.flow import estimators
from pipeline.flow.config import FlowConfig, default_batch_size, params_from_dict
from pipeline.flow.estimators import (ALGORITHMS, BACKENDS, ESTIMATORS, LEARNED, Backend, EstimatorSpec,
                                      algorithms_for, all_backends, auto_backend, backend_for, make_estimator)
from pipeline.stages.config import WorkerConfig

REPO = Path(__file__).resolve().parents[1]


def _cpu_backend(name: str) -> str:
    """The first backend of `name`'s row that runs on cpu."""
    return next(b for b, build in ESTIMATORS[name].backends.items() if "cpu" in build.devices)


def _pair(kind: str, h: int = 24, w: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """A (1, H, W[, 3]) uint8 texture and the same texture moved 1 px right."""
    tex = np.random.default_rng(0).integers(0, 256, (h, w), dtype=np.uint8)
    prev, nxt = tex, np.roll(tex, 1, axis=1)
    if kind == "rgb":
        prev, nxt = np.repeat(prev[..., None], 3, -1), np.repeat(nxt[..., None], 3, -1)
    return prev[None], nxt[None]


def test_the_exported_lists_are_derived_from_the_table():
    assert ALGORITHMS == tuple(ESTIMATORS) == algorithms_for()
    assert BACKENDS == all_backends() == ("opencv", "torch")
    assert LEARNED == tuple(n for n, row in ESTIMATORS.items() if row.learned)
    for backend in BACKENDS:
        assert algorithms_for(backend) == tuple(n for n, row in ESTIMATORS.items() if backend in row.backends)
    assert all(ESTIMATORS[n].input == "rgb" for n in LEARNED)


def _literal_name_lists(path: Path) -> list[int]:
    """Lines of tuple/list/set literals in `path` naming three or more algorithms."""
    names = set(ESTIMATORS)
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
            hits = [e.value for e in node.elts if isinstance(e, ast.Constant) and e.value in names]
            if len(hits) >= 3:
                out.append(node.lineno)
    return out


def test_no_module_keeps_its_own_list_of_algorithm_names():
    table = REPO / "pipeline" / "flow" / "estimators.py"
    found = {str(p.relative_to(REPO)): lines for folder in ("pipeline", "training", "jobs", "bench")
             for p in sorted((REPO / folder).rglob("*.py")) if p != table and (lines := _literal_name_lists(p))}
    assert found == {}, f"import the names from pipeline.flow.estimators instead: {found}"


CPU_BUILDS = [(n, b) for n, row in ESTIMATORS.items() for b, build in row.backends.items()
              if "cpu" in build.devices and not row.learned]


@pytest.mark.parametrize(("name", "backend"), CPU_BUILDS)
def test_every_classical_estimator_builds_on_its_cpu_backends(name, backend, torch_one_thread):
    cfg = FlowConfig(algorithm=name, backend=backend)
    est = make_estimator(cfg)
    assert est.input == cfg.input == ESTIMATORS[name].input
    assert isinstance(cfg.params, ESTIMATORS[name].params)
    flow = est(*_pair(cfg.input))
    assert flow.shape == (1, 24, 32, 2) and flow.dtype == np.float32
    assert np.median(flow[0, 6:-6, 6:-6, 0]) == pytest.approx(1.0, abs=0.3)  # the texture moved 1 px right


@pytest.mark.parametrize("name", LEARNED)
def test_learned_estimators_refuse_to_build_without_their_weights(name, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))  # no cached checkpoint to find
    backend = _cpu_backend(name)
    with pytest.raises(FileNotFoundError, match=f"{name}.*weights|weights.*{name}"):
        make_estimator(FlowConfig(algorithm=name, backend=backend))
    missing = tmp_path / "missing.pth"
    params = params_from_dict(name, {"weights": str(missing)})
    with pytest.raises(FileNotFoundError, match="weights file") as info:
        make_estimator(FlowConfig(algorithm=name, backend=backend, params=params))
    assert str(missing) in str(info.value)


def test_refusals_name_what_the_table_allows():
    with pytest.raises(ValueError, match="'pwc'") as info:
        FlowConfig(algorithm="pwc")
    assert all(repr(n) in str(info.value) for n in ESTIMATORS)
    with pytest.raises(ValueError, match="'cuda'") as info:
        FlowConfig(algorithm="tvl1", backend="cuda")
    assert all(repr(b) in str(info.value) for b in BACKENDS)
    with pytest.raises(ValueError, match="'dis'") as info:
        FlowConfig(algorithm="dis", backend="torch")
    assert str(algorithms_for("torch")) in str(info.value)
    with pytest.raises(ValueError, match="cpu only, not 'cuda:1'"):
        FlowConfig(algorithm="farneback", device="cuda:1")
    with pytest.raises(ValueError, match="'mps'"):
        FlowConfig(algorithm="tvl1", backend="torch", device="mps")
    with pytest.raises(ValueError, match="unknown dis parameter"):
        params_from_dict("dis", {"warps": 3})
    with pytest.raises(ValueError, match="'pwc'"):  # the factory checks too, for settings that skipped FlowConfig
        make_estimator(SimpleNamespace(algorithm="pwc", backend="opencv", device="cpu"))
    with pytest.raises(ValueError, match="opencv backend implements"):
        backend_for("raft_small", "opencv", "cpu")


def test_a_row_checks_its_own_fields():
    build = Backend(factory=lambda cfg: None, devices=("cpu",))
    with pytest.raises(ValueError, match="'grey'"):
        EstimatorSpec(params=FlowConfig, backends={"x": build}, input="grey")
    with pytest.raises(ValueError, match="params must be a dataclass type"):
        EstimatorSpec(params=dict, backends={"x": build})
    with pytest.raises(ValueError, match="at least one backend"):
        EstimatorSpec(params=FlowConfig, backends={})
    with pytest.raises(ValueError, match="'tpu'"):
        Backend(factory=lambda cfg: None, devices=("tpu",))


def test_auto_backend_picks_one_that_implements_the_algorithm():
    for name in ESTIMATORS:
        backend = auto_backend(name, "cpu")
        assert backend == ("opencv" if "opencv" in ESTIMATORS[name].backends else "torch")
        FlowConfig(algorithm=name, backend=backend)  # accepted
        assert auto_backend(name, "cuda:0") == "torch"
    with pytest.raises(ValueError, match="'pwc'"):
        auto_backend("pwc", "cpu")


def test_default_batch_sizes_come_from_the_rows():
    assert [default_batch_size(n, "cuda", 256, 340) for n in ("tvl1", "raft_small", "raft_large", "sea_raft_m")] \
        == [126, 64, 32, 64]
    assert [default_batch_size(n, "cpu", 256, 340) for n in ALGORITHMS] \
        == [4 if n in LEARNED else 16 for n in ALGORITHMS]
    assert default_batch_size("tvl1", "cuda", 8, 8) == 256 and default_batch_size("raft_large", "cuda", 2048, 2048) == 8


@dataclass(frozen=True, kw_only=True)
class ShiftParams:
    dx: float = 1.0


class ShiftFlow:
    """A stand-in estimator: the same horizontal motion everywhere."""

    input = "gray"

    def __init__(self, params: ShiftParams, threads: int) -> None:
        self.params, self.threads = params, threads

    def __call__(self, prev: np.ndarray, nxt: np.ndarray) -> np.ndarray:
        flow = np.zeros(prev.shape + (2,), np.float32)
        flow[..., 0] = self.params.dx
        return flow


def test_one_row_is_all_an_estimator_needs(monkeypatch):
    row = EstimatorSpec(params=ShiftParams, cpu_batch=3, packages=("numpy",),
                        backends={"numpy": Backend(factory=lambda cfg: ShiftFlow(cfg.params, cfg.threads),
                                                   devices=("cpu",))})
    monkeypatch.setitem(ESTIMATORS, "shift", row)
    assert "shift" in algorithms_for() and algorithms_for("numpy") == ("shift",) and "numpy" in all_backends()
    cfg = FlowConfig(algorithm="shift", backend="numpy", params=params_from_dict("shift", {"dx": 2.5}), threads=2)
    assert cfg.input == "gray" and cfg.batch_for(64, 64) == 3
    assert FlowConfig(algorithm="shift", backend="numpy").params == ShiftParams()
    est = make_estimator(cfg)
    assert isinstance(est, ShiftFlow) and est.threads == 2
    assert np.all(est(*_pair("gray"))[..., 0] == 2.5)
    assert tools.fingerprint(WorkerConfig(flow=cfg))["numpy"] == np.__version__
    with pytest.raises(ValueError, match="numpy backend implements \\('shift',\\), not 'tvl1'"):
        FlowConfig(algorithm="tvl1", backend="numpy")
    monkeypatch.undo()
    with pytest.raises(ValueError, match="'shift'"):
        FlowConfig(algorithm="shift", backend="numpy")
    assert estimators.ESTIMATORS is ESTIMATORS and "shift" not in ESTIMATORS
