"""Unit records (OUTPUT/.flowshard/units/<stem>.json) as typed records: a JSON round trip that
keeps the bytes, refuses unknown keys and mistyped values, and reads what release 0.1 wrote."""
import json
from pathlib import Path

import pytest

from pipeline.build import manifest
from pipeline.build.records import ShardRow, UnitRecord, VideoRow

UNITS = Path(__file__).parent / "fixtures" / "release-0.1" / "dataset" / ".flowshard" / "units"


def _release_records() -> list[Path]:
    paths = sorted(UNITS.glob("*.json"))
    assert len(paths) == 2, paths  # the fixture's train and test units
    return paths


@pytest.mark.parametrize("path", _release_records(), ids=lambda p: p.stem)
def test_release_0_1_records_load_and_write_back_the_same_bytes(path):
    data = json.loads(path.read_bytes())
    rec = UnitRecord.from_json(data)
    assert rec.stem == path.stem and rec.computed == 2 and rec.reused == 0
    assert all(isinstance(s, ShardRow) for s in rec.shards) and all(isinstance(v, VideoRow) for v in rec.videos)
    assert [v.status for v in rec.videos] == ["ok", "ok"] and all(v.frames == 10 for v in rec.videos)
    assert rec.shards[0].name == f"{path.stem}.tar"
    assert manifest.dump_json(rec.to_json()) == path.read_bytes()


def _record() -> dict:
    return json.loads(_release_records()[0].read_bytes())


def test_an_unknown_key_is_refused_by_name():
    data = _record()
    data["stems"] = data.pop("stem")  # a typo
    with pytest.raises(ValueError, match="'stems'"):
        UnitRecord.from_json(data)
    data = _record()
    data["videos"][0]["lable"] = "left"
    with pytest.raises(ValueError, match="video row has unknown key 'lable'"):
        UnitRecord.from_json(data)
    data = _record()
    data["shards"][0]["sha"] = ""
    with pytest.raises(ValueError, match="shard row has unknown key 'sha'"):
        UnitRecord.from_json(data)


def test_a_mistyped_or_missing_value_is_refused_by_name():
    data = _record()
    data["videos"][0]["frames"] = "10"
    with pytest.raises(ValueError, match="'frames'"):
        UnitRecord.from_json(data)
    data = _record()
    data["shards"][0]["bytes"] = True  # a bool is not a byte count
    with pytest.raises(ValueError, match="'bytes'"):
        UnitRecord.from_json(data)
    data = _record()
    del data["videos"][0]["sha256"]
    with pytest.raises(ValueError, match="lacks the key 'sha256'"):
        UnitRecord.from_json(data)
    with pytest.raises(ValueError, match="'videos' must be a list"):
        UnitRecord.from_json({**_record(), "videos": None})


def test_fields_an_older_record_lacks_take_their_documented_defaults():
    data = _record()
    for key in ("computed", "reused"):
        del data[key]
    for row in data["videos"]:
        for key in ("error", "error_kind", "content_sha256", "media_key", "boxes"):
            del row[key]
    rec = UnitRecord.from_json(data)
    assert (rec.computed, rec.reused) == (0, 0)
    v = rec.videos[0]
    assert (v.error, v.error_kind, v.content_sha256, v.media_key, v.boxes) == ("", "", "", "", "")
    assert UnitRecord.from_json(rec.to_json()) == rec


def test_a_row_is_built_with_keywords_only():
    with pytest.raises(TypeError):
        ShardRow("a.tar", "train", 1, 10, "")  # the positional order is no contract
    row = ShardRow(name="a.tar", split="train", samples=1, bytes=10, sha256="x")
    assert ShardRow.from_json(row.to_json()) == row
