"""Truncated inputs are not silent: declared vs decoded frames per video, `--min-coverage`,
and the report's warning column."""
import json

import pytest
from click.testing import CliRunner

from jobs.cli import cli
from pipeline import open_dataset
from pipeline.build.manifest import read_rows
from pipeline.report import classify
from pipeline.stages.config import WorkerConfig
from pipeline.synthetic import motion

ARGS = ("--flow", "dis", "--resize", "none", "--executor", "local", "--no-progress", "--chunk-frames", "8")


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    """left/cut.mp4: a faststart MP4 of 100 declared frames cut at 60 % of its bytes; left/fine.mp4 whole."""
    root = tmp_path_factory.mktemp("coverage")
    (root / "in" / "left").mkdir(parents=True)
    whole = motion.write_video(root / "whole.mp4", motion.moving_frames("left", 100, 48, 64, seed=1),
                               extra_args=("-movflags", "+faststart"))
    motion.write_truncated(root / "in" / "left" / "cut.mp4", whole, 0.6)
    motion.write_video(root / "in" / "left" / "fine.mp4", motion.moving_frames("left", 12, 48, 64, seed=2))
    return root / "in"


def _build(videos, out, *extra):
    result = CliRunner().invoke(cli, ["build", str(videos), str(out), *ARGS, *extra])
    assert result.exit_code == 0, result.output + repr(result.exception)
    return {v.path: v for v in open_dataset(out).videos(include_errors=True)}


@pytest.mark.parametrize("mode", [(), ("--clips", "1", "--clip-len", "2")])
def test_a_cut_download_is_a_permanent_error_row_by_default(videos, tmp_path, mode):
    rows = _build(videos, tmp_path / "ds", *mode)
    cut, fine = rows["left/cut.mp4"], rows["left/fine.mp4"]
    assert (cut.status, cut.error_kind) == ("error", "permanent")
    assert "of 100 declared frames, below --min-coverage 0.9" in cut.error and classify(cut.error) == "cut short"
    assert fine.status == "ok" and (fine.declared_frames, fine.decoded_frames) == (12, 12) and not fine.warning


def test_a_lower_min_coverage_stores_it_with_a_warning_in_the_manifest_and_report(videos, tmp_path):
    strict = _build(videos, tmp_path / "strict")
    rows = _build(videos, tmp_path / "lax", "--min-coverage", "0.05")
    cut = rows["left/cut.mp4"]
    assert cut.status == "ok" and cut.declared_frames == 100 and 2 <= cut.decoded_frames == cut.frames < 90
    assert cut.warning == f"decoded {cut.frames} of 100 declared frames"
    row = {r["path"]: r for r in read_rows(tmp_path / "lax" / "manifest.parquet")}["left/cut.mp4"]
    assert (row["declared_frames"], row["decoded_frames"]) == (100, cut.frames)
    # the setting changes which videos are stored, so it names another version
    assert open_dataset(tmp_path / "lax").version != open_dataset(tmp_path / "strict").version
    assert strict["left/cut.mp4"].status == "error"
    text = CliRunner().invoke(cli, ["report", str(tmp_path / "lax")]).output
    assert "1 stored video(s) with a warning" in text and f"decoded {cut.frames} of 100 declared frames" in text
    report = json.loads(CliRunner().invoke(cli, ["report", str(tmp_path / "lax"), "--json"]).output)
    assert [w["path"] for w in report["warnings"]] == ["left/cut.mp4"]


def test_min_coverage_zero_keeps_the_ids_of_earlier_releases_and_bad_values_are_refused():
    assert "min_coverage" not in WorkerConfig(min_coverage=0).output_dict()["limits"]
    assert WorkerConfig().output_dict()["limits"]["min_coverage"] == 0.9
    for bad in (-0.1, 1.5, True, "0.9"):
        with pytest.raises(ValueError, match="min_coverage"):
            WorkerConfig(min_coverage=bad)
