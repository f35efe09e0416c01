"""`flowshard flow-check`: the table, --json, user pairs with .flo ground truth, and the same
numbers as bench/gpu_flow.py."""
from __future__ import annotations

import json

import cv2
import pytest
from click.testing import CliRunner

from jobs.cli import cli
from pipeline.flow import accuracy as flow_eval


def run(*args):
    return CliRunner().invoke(cli, ["flow-check", *args], catch_exceptions=False)


def test_table_and_json(tmp_path):
    out = tmp_path / "scores.json"
    res = run("--flow", "farneback", "--size", "80x64", "--pairs", "1", "--json", str(out))
    assert res.exit_code == 0, res.output
    lines = res.output.splitlines()
    assert lines[0].startswith("farneback (opencv, cpu)") and lines[1].split()[:5] == ["CASE", "PAIRS", "SIZE",
                                                                                       "MAX", "PX"]
    assert [ln.split()[0] for ln in lines[2:]] == [*flow_eval.MOTIONS, "all"]
    report = json.loads(out.read_text())
    assert report["flow"]["algorithm"] == "farneback" and len(report["cases"]) == 5
    assert all(0 < c["epe"] < 1 and c["outliers_3px"] < 0.05 and c["pairs_per_s"] > 0 for c in report["cases"])
    assert report["overall"]["pairs"] == 5


def test_user_pair_with_flo(tmp_path):
    prev, nxt, truth = flow_eval.photo_pair("shift_pixels", 64, 96, seed=3)
    cv2.imwrite(str(tmp_path / "a.png"), prev)
    cv2.imwrite(str(tmp_path / "b.png"), nxt)
    flow_eval.write_flo(tmp_path / "gt.flo", truth)
    out = tmp_path / "s.json"
    res = run("--flow", "dis", "--flow-param", "preset=fast", "--no-builtin", "--pair", str(tmp_path / "a.png"),
              str(tmp_path / "b.png"), "--gt", str(tmp_path / "gt.flo"), "--json", str(out))
    assert res.exit_code == 0, res.output
    (case,) = json.loads(out.read_text())["cases"]
    assert case["case"] == "a.png" and (case["width"], case["height"]) == (96, 64)
    assert case["epe"] < 1.0 and case["max_motion_px"] == pytest.approx(float(abs(truth).max()), abs=1e-3)
    # a wrong ground truth (sign flipped) is scored as wrong
    flow_eval.write_flo(tmp_path / "neg.flo", -truth)
    res = run("--flow", "dis", "--no-builtin", "--pair", str(tmp_path / "a.png"), str(tmp_path / "b.png"),
              "--gt", str(tmp_path / "neg.flo"), "--json", str(out))
    assert json.loads(out.read_text())["cases"][0]["outliers_3px"] > 0.5


def test_bad_input_is_named(tmp_path):
    res = CliRunner().invoke(cli, ["flow-check", "--pair", "a.png", "b.png"])
    assert res.exit_code != 0 and "1 --pair and 0 --gt" in res.output
    (tmp_path / "x.flo").write_bytes(b"garbage-garbage")
    cv2.imwrite(str(tmp_path / "a.png"), flow_eval.photo_pair("zoom", 32, 32)[0])
    res = CliRunner().invoke(cli, ["flow-check", "--no-builtin", "--pair", str(tmp_path / "a.png"),
                                   str(tmp_path / "a.png"), "--gt", str(tmp_path / "x.flo")])
    assert res.exit_code != 0 and "x.flo: not a Middlebury .flo file" in res.output
    res = CliRunner().invoke(cli, ["flow-check", "--size", "12"])
    assert res.exit_code != 0 and "--size '12'" in res.output
    res = CliRunner().invoke(cli, ["flow-check", "--flow", "dis", "--flow-param", "preset=slowest"])
    assert res.exit_code != 0 and "preset" in res.output


def test_same_numbers_as_the_benchmark(tmp_path, torch_one_thread):
    from bench.gpu_flow import BenchConfig, accuracy

    out = tmp_path / "s.json"
    res = run("--flow", "tvl1", "--size", "64x48", "--pairs", "1", "--json", str(out))
    assert res.exit_code == 0, res.output
    cli_epe = {c["case"]: c["epe"] for c in json.loads(out.read_text())["cases"]}
    _, rows = accuracy(BenchConfig(acc_height=48, acc_width=64, acc_pairs=1, device="cpu", dtypes=("fp32",),
                                   stereo_scale=0.2))
    bench = {r["case"]: round(r["OpenCV TV-L1"], 6) for r in rows if not r["case"].startswith("stereo")}
    assert bench == cli_epe
