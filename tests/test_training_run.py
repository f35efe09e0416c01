"""Run-level settings: which split is evaluated, how long an epoch is, where a run's files go."""
from __future__ import annotations

import pytest

from jobs.runs import open_run_folder, pick_split
from test_training_data import LABELS, uneven_dataset
from training import data


def test_auto_evaluates_test_else_val_and_a_missing_split_is_an_error():
    assert pick_split("auto", ["test", "train"], "ds") == "test"
    assert pick_split("auto", ["train", "val"], "kinetics") == "val"
    assert pick_split("val", ["test", "train", "val"], "ds") == "val"
    with pytest.raises(ValueError, match=r"no test or val split.*\['train'\].*--eval-every 0"):
        pick_split("auto", ["train"], "ds", hint="or train without evaluation: --eval-every 0")
    with pytest.raises(ValueError, match=r"no split 'test'.*\['train', 'val'\]"):
        pick_split("test", ["train", "val"], "kinetics")


def test_an_epoch_of_videos_on_clip_shards_is_one_clip_per_video(tmp_path):
    from pipeline.clips import ClipsConfig, derive_clips

    root = uneven_dataset(tmp_path / "ds")
    derive_clips(root, tmp_path / "clips", ClipsConfig(clip_len=4, per_video=5))
    source = data.open_source(tmp_path / "clips")
    cfg = data.DataConfig(clip_len=4, batch_size=2)
    assert source.num_samples("train") == 55 and source.num_videos("train") == 11
    assert data.steps_per_epoch(source, "train", cfg, 1) == 27
    assert data.steps_per_epoch(source, "train", cfg, 1, per="videos") == 5
    videos = data.open_source(root)
    assert videos.num_videos("train") == videos.num_samples("train") == 11 and len(LABELS) == 3


def test_a_local_run_folder_is_the_output_itself(tmp_path):
    run = open_run_folder(str(tmp_path / "run"))
    assert run.local == run.output == tmp_path / "run" and run.local.is_dir()
    run.sync()  # nothing to upload
