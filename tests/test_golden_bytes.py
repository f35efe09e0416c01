"""Golden bytes: the shards of a tiny CPU build, per estimator and backend, are pinned by sha256.

Output bytes may change only together with `SCHEMA_VERSION` (pipeline/encode.py): a change that
alters them without a bump would let a resume mix bytes of two code versions under one version id.
The comparison runs where the tools fingerprint (ffmpeg, OpenCV, torch, JPEG encoder) matches the
one recorded; elsewhere the bytes may differ for reasons outside this code, and the test says so.

After a deliberate schema change (bump SCHEMA_VERSION first), rewrite the table with
    PYTHONPATH=. python tests/test_golden_bytes.py
"""
import hashlib
import json
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from jobs.cli import cli
from pipeline import encode, open_dataset

FIXTURE = Path(__file__).parent / "fixtures" / "release-0.1"
GOLDEN = Path(__file__).parent / "fixtures" / "golden_shards.json"
CASES = {
    "farneback-opencv": ["--flow", "farneback"],
    "dis-opencv": ["--flow", "dis"],
    "tvl1-opencv": ["--flow", "tvl1"],
    "tvl1-torch": ["--flow", "tvl1", "--flow-backend", "torch", "--flow-device", "cpu"],
}
COMMON = ["--resize", "none", "--shard-samples", "3", "--executor", "local", "--no-progress"]


def build_case(case: str, out: Path) -> dict:
    """Build the fixture's videos with one case's settings; return the record the table keeps."""
    result = CliRunner().invoke(cli, ["build", str(FIXTURE / "list.csv"), str(out), *CASES[case], *COMMON])
    if result.exit_code != 0:
        raise AssertionError(f"build {case} failed: {result.output}{result.exception!r}")
    shards = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted((out / "shards").glob("*.tar"))}
    return {"schema_version": encode.SCHEMA_VERSION, "tools": open_dataset(out).info["config"]["tools"],
            "version": open_dataset(out).version, "shards": shards}


@pytest.mark.parametrize("case", sorted(CASES))
def test_shard_bytes_change_only_with_the_schema_version(case, tmp_path, monkeypatch):
    monkeypatch.chdir(FIXTURE)  # the list's relative paths, as when the table was written
    golden = json.loads(GOLDEN.read_text())[case]
    got = build_case(case, tmp_path / "ds")
    if got["tools"] != golden["tools"]:
        pytest.skip(f"tools differ from the recorded ones ({got['tools']} vs {golden['tools']}): bytes not comparable")
    if got["schema_version"] != golden["schema_version"]:
        pytest.fail(f"SCHEMA_VERSION is {got['schema_version']}, the golden table was written at "
                    f"{golden['schema_version']}: rewrite it (see this module's docstring)")
    assert got["shards"] == golden["shards"], (
        f"{case}: shard bytes changed while SCHEMA_VERSION stayed {got['schema_version']}: "
        "bump it (and rewrite the table) or restore the bytes")
    assert got["version"] == golden["version"]


def write_table(scratch: Path) -> None:
    """Rewrite the golden table from this code and these tools."""
    import os

    os.chdir(FIXTURE)
    table = {case: build_case(case, scratch / case) for case in sorted(CASES)}
    GOLDEN.write_text(json.dumps(table, indent=1, sort_keys=True) + "\n")


if __name__ == "__main__":
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        write_table(Path(tmp))
    sys.exit(0)
