"""What changes the bytes is in the version: tools by version, weights by content, tars by sha256;
transient failures are retried, and `--retry-errors` computes a version's error rows again."""
import errno
import json
import re
import shutil
from pathlib import Path

import pytest

from pipeline import open_dataset, tools
from pipeline.stages import plan as planning
from pipeline.build import manifest
from pipeline.flow.config import FlowConfig
from pipeline.flow.params import RAFTParams
from pipeline.verify import verify
from pipeline.stages.config import WorkerConfig
from tests.helpers import build_summary, flowshard

ARGS = ("--flow", "dis", "--resize", "none", "--shard-samples", "3", "--executor", "local")


def build(src, out, *extra):
    """A build with this file's settings; (version id, videos computed, videos copied, output)."""
    return build_summary(src, out, *ARGS, *extra)


def tars(out):
    return sorted(p.name for p in (Path(out) / "shards").glob("*.tar"))


def test_the_fingerprint_names_the_tools_the_settings_use(tmp_path):
    opencv = tools.fingerprint(WorkerConfig())
    assert set(opencv) >= {"ffmpeg", "opencv"} and "torch" not in opencv and opencv["ffmpeg"] != "unknown"
    torch_cpu = tools.fingerprint(WorkerConfig(flow=FlowConfig(backend="torch")))
    assert (torch_cpu["flow_device"], torch_cpu["flow_dtype"]) == ("cpu", "fp32") and torch_cpu["torch"]
    a, b = tmp_path / "a.pth", tmp_path / "b" / "weights.pth"
    b.parent.mkdir()
    a.write_bytes(b"the same weights")
    b.write_bytes(b"the same weights")
    raft = [WorkerConfig(flow=FlowConfig(algorithm="raft_small", backend="torch", params=RAFTParams(weights=str(p))))
            for p in (a, b)]
    prints = [tools.fingerprint(c) for c in raft]
    assert prints[0] == prints[1] and prints[0]["torchvision"]  # same bytes under another path: same
    assert raft[0].output_dict() == raft[1].output_dict()
    b.write_bytes(b"other weights")
    assert tools.fingerprint(raft[1])["weights_sha256"] != prints[0]["weights_sha256"]


def test_a_changed_tool_builds_a_new_version_sharing_identical_shards(motion_videos, tmp_path, monkeypatch):
    out = tmp_path / "ds"
    v1, computed, _, _ = build(motion_videos, out)
    assert computed == 8
    first = tars(out)
    monkeypatch.setattr(tools, "ffmpeg_version", lambda exe: "99.0-other")
    v2, computed, copied, _ = build(motion_videos, out)
    assert v2 != v1 and (computed, copied) == (8, 0)  # nothing copied across tools: all decoded again
    assert tars(out) == first  # same bytes, so the same tars: shared, not stored twice
    assert {s.name for s in open_dataset(f"{out}@{v2}").shards()} == set(first)
    info = json.loads((out / "versions" / v2 / manifest.DATASET_JSON).read_text())
    assert info["config"]["tools"]["ffmpeg"] == "99.0-other" and verify(out).ok
    monkeypatch.undo()
    assert build(motion_videos, out)[0] == v1  # the first tools again: the first version


def test_a_resume_with_another_tool_writes_its_units_again(motion_videos, tmp_path, monkeypatch):
    out = tmp_path / "ds"
    v1, *_ = build(motion_videos, out)
    for done in out.rglob(manifest.DATASET_JSON):  # as if killed before the commit, every unit written
        done.unlink()
    monkeypatch.setattr(tools, "ffmpeg_version", lambda exe: "99.0-other")
    v2, computed, _, text = build(motion_videos, out)
    assert v2 != v1 and computed == 8 and "0 unit(s) already done" in text


def test_resume_checks_a_finished_units_sha256_not_only_its_size(motion_videos, tmp_path):
    out = tmp_path / "ds"
    v1, *_ = build(motion_videos, out)
    tar = out / "shards" / tars(out)[0]
    data = bytearray(tar.read_bytes())
    data[1000] ^= 0xFF  # same size, other bytes
    tar.write_bytes(bytes(data))
    for done in out.rglob(manifest.DATASET_JSON):
        done.unlink()
    v, computed, _, text = build(motion_videos, out)
    assert v == v1 and "2 unit(s) already done" in text and computed == 3
    assert verify(out).ok


def _unreachable(key, calls):
    """plan_video for one video fails like a dropped connection, every time it is tried."""
    real = planning.plan_video

    def plan(ref, cfg):
        if ref.key == key:
            calls.append(ref.key)
            raise ConnectionResetError(errno.ECONNRESET, "connection reset by peer")
        return real(ref, cfg)

    return plan


def test_retry_errors_computes_the_error_rows_again_into_a_new_version(motion_videos, tmp_path, monkeypatch):
    out = tmp_path / "ds"
    calls = []
    with monkeypatch.context() as mp:
        mp.setattr(planning, "plan_video", _unreachable("up_v_up_g00", calls))
        v1, computed, _, _ = build(motion_videos, out)
    assert len(calls) == 3  # tried three times within the build
    rows = {v.video_id: v for v in open_dataset(out).videos(include_errors=True)}
    assert (rows["up_v_up_g00"].status, rows["up_v_up_g00"].error_kind) == ("error", "transient")
    assert all(v.error_kind == "" for k, v in rows.items() if k != "up_v_up_g00")
    report = flowshard("report", out)
    assert "1 of them transient" in report and re.search(r"^other\s+1\s+transient\s", report, re.M), report
    assert json.loads(flowshard("report", out, "--json"))["failures"][0]["videos"][0]["kind"] == "transient"

    assert build(motion_videos, out)[0] == v1  # a plain rerun: the same version, error row and all
    before = set(tars(out))
    units = manifest.read_rows(out / "versions" / v1 / "units.parquet")
    (unit,) = [u for u in units if "up_v_up_g00" in u["keys"]]
    v2, computed, copied, text = build(motion_videos, out, "--retry-errors")
    assert v2 != v1 and (computed, copied) == (1, 0)  # the retried video alone, in a new unit
    assert f"{len(units)} unit(s) already done" in text  # its old unit too: it lost only an error row
    ds = open_dataset(out)
    assert ds.version == v2 and len(ds.errors()) == 0 and verify(out).ok
    assert before <= {s.name for s in ds.shards()} and len(set(tars(out)) - before) == 1  # one small tar anew
    new_units = manifest.read_rows(out / "versions" / v2 / "units.parquet")
    assert [u["keys"] for u in new_units if u["name"] not in {x["name"] for x in units}] == [["up_v_up_g00"]]
    assert "up_v_up_g00" not in next(u for u in new_units if u["name"] == unit["name"])["keys"]
    assert build(motion_videos, out)[0] == v2  # a plain rerun keeps the retried version
    assert build(motion_videos, out, "--retry-errors")[0] == v2  # nothing left to retry
    # The same retry of the same version gives the same id, wherever it is built.
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    build(motion_videos, copy)  # the latest is v2 there too
    assert open_dataset(copy).version == v2


@pytest.mark.parametrize("fails", [2])
def test_the_local_executor_retries_transient_failures(motion_videos, tmp_path, monkeypatch, fails):
    calls = []
    plan = _unreachable("up_v_up_g00", calls)
    real = planning.plan_video

    def flaky(ref, cfg):
        if ref.key == "up_v_up_g00" and len(calls) >= fails:
            return real(ref, cfg)
        return plan(ref, cfg)

    monkeypatch.setattr(planning, "plan_video", flaky)
    _, computed, _, _ = build(motion_videos, tmp_path / "ds")
    assert len(calls) == fails and computed == 8 and len(open_dataset(tmp_path / "ds").errors()) == 0


def test_retry_errors_takes_transient_rows_and_all_takes_the_broken_files_too(motion_videos, tmp_path, monkeypatch):
    src = tmp_path / "in"
    shutil.copytree(motion_videos, src)
    (src / "left" / "broken.mp4").write_bytes(b"not a video at all" * 100)
    out = tmp_path / "ds"
    with monkeypatch.context() as mp:
        mp.setattr(planning, "plan_video", _unreachable("up_v_up_g00", []))
        v1, *_ = build(src, out)
    kinds = {v.video_id: v.error_kind for v in open_dataset(out).errors()}
    assert kinds == {"up_v_up_g00": "transient", "left_broken": "permanent"}
    calls = []
    with monkeypatch.context() as mp:  # still unreachable: the retry is tried, and fails again
        mp.setattr(planning, "plan_video", _unreachable("up_v_up_g00", calls))
        v2, computed, copied, _ = build(src, out, "--retry-errors")
    assert v2 != v1 and computed == 1 and copied == 0 and len(calls) == 3
    assert {v.video_id for v in open_dataset(out).errors()} == {"up_v_up_g00", "left_broken"}
    v3, computed, _, _ = build(src, out, "--retry-errors=all")
    assert v3 not in (v1, v2) and computed == 2  # the broken file is tried again too (and still fails)
    rows = {v.video_id: v for v in open_dataset(out).videos(include_errors=True)}
    assert rows["up_v_up_g00"].status == "ok" and rows["left_broken"].status == "error"
    assert verify(out).ok
