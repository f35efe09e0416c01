"""The streaming loader on small hand-built shards with known content.

Frame i of every video is a flat grey of value 8 * i, and flow field i moves i - 7 px in x
and -2 px in y, so a batch tells which frame and fields the sampler chose.
"""
from __future__ import annotations

import pickle
import shutil

import numpy as np
import pytest

from pipeline import encode, shard
from pipeline.build import manifest
from pipeline.flow.quantize import dequantize
from training import data
from training.data import loader as data_loader
from training.data import shards as data_shards
from training.data import stages as data_stages
from training.data import DataConfig
from training.transforms import IMAGENET_MEAN, IMAGENET_STD, TransformConfig

W, H = 32, 24
LABELS = {"a": 0, "b": 1, "c": 2}


def video_sample(key: str, label: str, frames: int, *, split: str = "train", video_id: str | None = None,
                 clips: list[dict] | None = None, garbage_except: set | None = None, extra: dict | None = None) -> dict:
    """A video sample; with `clips`, a clips-mode sample whose unlisted members are not JPEGs."""
    rgb = [encode.encode_rgb(np.full((H, W, 3), 8 * i, np.uint8)) for i in range(frames)]
    flows = [encode.encode_flow(np.broadcast_to(np.array([i - 7.0, -2.0], np.float32), (H, W, 2)), 20.0)
             for i in range(frames - 1)]
    if garbage_except is not None:
        rgb = [b if ("rgb", i) in garbage_except else b"not a jpeg" for i, b in enumerate(rgb)]
        flows = [b if ("flow", i) in garbage_except else b"not a jpeg" for i, b in enumerate(flows)]
    meta = {"schema_version": encode.SCHEMA_VERSION, "kind": "video", "video_id": video_id or key, "key": key,
            "part": 0, "num_parts": 1, "source": f"{label}/{key}.mp4", "label": label, "label_id": LABELS[label],
            "split": split, "fps": 25.0, "size": [W, H],
            "frames": [{"index": i, "pts": i / 25} for i in range(frames)],
            "flow_fields": [{"from": i, "to": i + 1} for i in range(frames - 1)],
            "flow": {"algorithm": "farneback", "bound": 20.0, "step": 1}, "rgb": {"codec": "jpg", "quality": 90},
            "mode": "clips" if clips else "dense", "clips": clips or []}
    sample = encode.to_sample(key, meta, rgb, flows)
    sample.update(extra or {})
    return sample


def write_dataset(root, shards: dict[str, list[dict]], kind: str = "videos"):
    """A dataset folder in the build's layout: shards/, shards.parquet, dataset.json."""
    (root / manifest.SHARD_DIR).mkdir(parents=True)
    rows = []
    for name, samples in shards.items():
        rec = shard.write_shard(samples, root / manifest.SHARD_DIR / name)
        rows.append({"name": name, "split": name.split("-")[0], "samples": rec.samples, "bytes": rec.bytes,
                     "sha256": rec.sha256})
    manifest.write_parquet(root / manifest.SHARDS, rows, manifest.SHARD_SCHEMA)
    info = {"kind": kind, "schema_version": 1, "label_map": LABELS, "version": "test"}
    manifest.atomic_write_bytes(root / manifest.DATASET_JSON, manifest.dump_json(info))
    return root


def uneven_dataset(root):
    """Train shards of 7, 3 and 1 videos; one test shard of 3 videos."""
    n = iter(range(100))
    train = {name: [video_sample(f"v{next(n):02d}", "abc"[i % 3], 16) for i in range(count)]
             for name, count in (("train-00000.tar", 7), ("train-00001.tar", 3), ("train-00002.tar", 1))}
    test = {"test-00000.tar": [video_sample(f"t{i}", "abc"[i], 16, split="test") for i in range(3)]}
    return write_dataset(root, {**train, **test})


def exact_cfg(**kw) -> DataConfig:
    """No resize, no flip: batches carry the stored values."""
    base = {"clip_len": 4, "batch_size": 2, "workers": 0, "shuffle_buffer": 4,
            "transform": TransformConfig(crop_size=H, scales=(1.0,), flip=False)}
    return DataConfig(**{**base, **kw})


def frame_index(rgb: np.ndarray) -> int:
    """Frame i of the test videos is grey 8 * i."""
    grey = (rgb[0] * IMAGENET_STD[0] + IMAGENET_MEAN[0]) * 255
    return int(round(float(grey.mean()) / 8))


def field_dx(flow: np.ndarray) -> list[float]:
    """The x motion in px of each stacked field (even channels)."""
    q = np.rint(flow[0::2].mean(axis=(1, 2)) * 128 + 128)
    return dequantize(q, 20.0).round(1).tolist()


def batches(loader, n: int | None = None) -> list[dict]:
    out = []
    for b in loader:
        out.append(b)
        if n is not None and len(out) == n:
            break
    return out


def test_video_samples_give_centred_clips_with_fields_in_time_order(tmp_path):
    source = data.open_source(uneven_dataset(tmp_path / "ds"))
    loader = data.make_loader(source, "train", exact_cfg(), train=True, steps=5)
    for batch in batches(loader, 5):
        assert batch["rgb"].shape == (2, 1, 1, 3, H, H) and batch["flow"].shape == (2, 1, 1, 8, H, H)
        for rgb, flow in zip(batch["rgb"][:, 0, 0].numpy(), batch["flow"][:, 0, 0].numpy()):
            dx = field_dx(flow)
            start = round(dx[0]) + 7
            assert dx == pytest.approx([start + j - 7.0 for j in range(4)], abs=0.2)  # x_t, x_t+1, ...
            assert np.allclose(flow[1::2].mean(axis=(1, 2)) * 128 + 128, 128 - 2 * 255 / 40, atol=1)  # y = -2 px
            assert frame_index(rgb) == start + 2  # the frame starts field L // 2


def test_clip_shards_give_the_centred_subset_for_a_shorter_clip_len(tmp_path):
    from pipeline.clips import ClipsConfig, derive_clips

    derive_clips(uneven_dataset(tmp_path / "ds"), tmp_path / "clips", ClipsConfig(clip_len=6, per_video=2))
    source = data.open_source(tmp_path / "clips")
    assert source.kind == "clips"
    for b in data.make_loader(source, "test", exact_cfg(clip_len=2), train=False):
        for rgb, flow in zip(b["rgb"][:, 0, 0].numpy(), b["flow"][:, 0, 0].numpy()):
            dx = field_dx(flow)
            assert len(dx) == 2 and dx[1] - dx[0] == pytest.approx(1.0, abs=0.2)
            assert frame_index(rgb) == round(dx[0]) + 7 + 1


@pytest.mark.parametrize("verify", ["stream", "open"])
@pytest.mark.parametrize("train", [False, True])
def test_a_shard_whose_hash_does_not_match_fails_naming_it(tmp_path, verify, train):
    root = uneven_dataset(tmp_path / "ds")
    bad = root / "shards" / "train-00001.tar"
    raw = bytearray(bad.read_bytes())
    raw[-1] ^= 0xFF  # end-of-archive padding: the tar still parses and every image decodes
    bad.chmod(0o644)
    bad.write_bytes(bytes(raw))
    loader = data.make_loader(data.open_source(root), "train", exact_cfg(verify=verify), train=train, steps=50)
    with pytest.raises(data.ShardHashError, match="train-00001.tar"):
        batches(loader, 50 if train else None)  # evaluation: to the end of the split


def test_verify_off_reads_a_changed_shard(tmp_path):
    root = uneven_dataset(tmp_path / "ds")
    bad = root / "shards" / "train-00000.tar"
    raw = bytearray(bad.read_bytes())
    raw[-1] ^= 0xFF
    bad.chmod(0o644)
    bad.write_bytes(bytes(raw))
    loader = data.make_loader(data.open_source(root), "train", exact_cfg(verify="off", test_clips=1), train=False)
    assert sum(len(b["label"]) for b in loader) == 11


def test_only_the_chosen_members_are_decoded_and_nothing_is_unpickled(tmp_path, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("something was unpickled")

    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    # One stored clip: frame 6 with fields 4..7; every other frame and field is not a JPEG.
    keep = {("rgb", 6)} | {("flow", i) for i in range(4, 8)}
    evil = pickle.dumps(shutil.rmtree)  # would be dangerous to load; must never be touched
    samples = [video_sample(f"v{i}", "a", 16, clips=[{"frame": 6, "flow": [4, 5, 6, 7]}], garbage_except=keep,
                            extra={"evil.pyd": evil, "weights.pth": evil}) for i in range(3)]
    source = data.open_source(write_dataset(tmp_path / "ds", {"train-00000.tar": samples}))
    for train in (True, False):
        for b in batches(data.make_loader(source, "train", exact_cfg(), train=train, steps=2), 2):
            assert frame_index(b["rgb"][0, 0, 0].numpy()) == 6
            assert field_dx(b["flow"][0, 0, 0].numpy()) == pytest.approx([-3.0, -2.0, -1.0, 0.0], abs=0.2)


@pytest.mark.parametrize("workers", [0, 2])
def test_uneven_shards_give_every_rank_the_same_number_of_batches(tmp_path, monkeypatch, workers):
    source = data.open_source(uneven_dataset(tmp_path / "ds"))
    keys = {}
    for rank in (0, 1):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "2")
        loader = data.make_loader(source, "train", exact_cfg(workers=workers), train=True, steps=6)
        got = batches(loader)  # the whole epoch, however many the loader gives
        assert len(got) >= 6 and all(len(b["label"]) == 2 for b in got)
        keys[rank] = [k for b in got[:6] for k in b["key"]]
    assert keys[0] != keys[1]  # the ranks read different slices of the shard draw


def test_epochs_are_reproducible_and_differ(tmp_path):
    source = data.open_source(uneven_dataset(tmp_path / "ds"))
    loader = data.make_loader(source, "train", exact_cfg(), train=True, steps=4)

    def keys(epoch):
        loader.set_epoch(epoch)
        return [(k, float(b["flow"][i].sum())) for b in batches(loader, 4) for i, k in enumerate(b["key"])]

    assert keys(0) == keys(0)
    assert keys(0) != keys(1)


def test_evaluation_reads_each_video_once_with_uniform_test_clips(tmp_path, monkeypatch):
    source = data.open_source(uneven_dataset(tmp_path / "ds"))
    cfg = exact_cfg(test_clips=3, batch_size=4)
    seen = []
    for rank in (0, 1):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "2")
        seen.append([(v, c) for b in data.make_loader(source, "train", cfg, train=False)
                     for v, c in zip(b["video_id"], b["clip"])])
    assert not set(seen[0]) & set(seen[1])
    everything = sorted(seen[0] + seen[1])
    assert everything == sorted((f"v{i:02d}", c) for i in range(11) for c in range(3))


def test_tsn_gives_one_snippet_per_segment_and_needs_video_samples(tmp_path):
    from pipeline.clips import ClipsConfig, derive_clips

    root = uneven_dataset(tmp_path / "ds")
    cfg = exact_cfg(sampler="tsn", segments=3)
    b = batches(data.make_loader(data.open_source(root), "train", cfg, train=True, steps=1), 1)[0]
    assert b["flow"].shape == (2, 1, 3, 8, H, H)
    starts = [round(field_dx(v.numpy())[0]) + 7 for v in b["flow"][0, 0]]
    assert starts == sorted(starts)  # segments in time order
    derive_clips(root, tmp_path / "clips", ClipsConfig(clip_len=4, per_video=2))
    with pytest.raises(ValueError, match="tsn sampling needs video samples"):
        data.make_loader(data.open_source(tmp_path / "clips"), "train", cfg, train=True, steps=1)


def test_rgb_only_reads_no_flow(tmp_path):
    source = data.open_source(uneven_dataset(tmp_path / "ds"))
    b = batches(data.make_loader(source, "train", exact_cfg(streams="rgb"), train=True, steps=1), 1)[0]
    assert "flow" not in b and b["rgb"].shape == (2, 1, 1, 3, H, H)


def test_an_unknown_schema_version_names_shard_and_sample(tmp_path):
    sample = video_sample("v0", "a", 8)
    sample["json"] = sample["json"].replace(b'"schema_version":1', b'"schema_version":99')
    source = data.open_source(write_dataset(tmp_path / "ds", {"train-00000.tar": [sample]}))
    with pytest.raises(data.SampleError, match="train-00000.tar sample v0.*unknown schema version 99"):
        batches(data.make_loader(source, "train", exact_cfg(), train=False))


def test_a_list_of_shard_urls_is_a_source(tmp_path):
    root = uneven_dataset(tmp_path / "ds")
    source = data.url_source([str(root / "shards" / "train-{00000..00002}.tar")], label_map=LABELS)
    assert len(source.shards) == 3 and source.num_classes == 3
    loader = data.make_loader(source, "train", exact_cfg(test_clips=1), train=False)
    got = sum(len(b["label"]) for b in loader)
    assert got == 11


def test_data_config_validation_names_the_bad_value():
    with pytest.raises(ValueError, match="unknown verify mode 'md5'"):
        DataConfig(verify="md5")
    with pytest.raises(ValueError, match="unknown sampler 'dense'"):
        DataConfig(sampler="dense")


def test_strided_clips_of_video_samples_come_in_time_order_a_stride_apart(tmp_path):
    source = data.open_source(uneven_dataset(tmp_path / "ds"))
    cfg = exact_cfg(sampler="strided", snippets=3, strides=(1, 4))
    seen = set()
    for b in batches(data.make_loader(source, "train", cfg, train=True, steps=6), 6):
        assert b["rgb"].shape == (2, 1, 3, 3, H, H) and b["flow"].shape == (2, 1, 3, 8, H, H)
        for rgb, flow in zip(b["rgb"][:, 0].numpy(), b["flow"][:, 0].numpy()):
            frames = [frame_index(r) for r in rgb]
            step = {q - p for p, q in zip(frames, frames[1:])}
            assert len(step) == 1
            seen |= step
            assert [round(field_dx(f)[0]) + 7 + 2 for f in flow] == frames  # each stack centred on its frame
    assert seen == {1, 4}
    tests = batches(data.make_loader(source, "test", exact_cfg(sampler="strided", snippets=3, strides=(1, 4),
                                                               test_clips=2), train=False))
    assert sum(len(b["label"]) for b in tests) == 3 * 2 * 2  # 3 videos x 2 strides x 2 starts


@pytest.mark.parametrize("clip_shards", [False, True])
def test_overlapping_snippets_decode_each_member_once(tmp_path, monkeypatch, clip_shards):
    from pipeline.clips import ClipsConfig, derive_clips

    source = root = uneven_dataset(tmp_path / "ds")
    if clip_shards:
        derive_clips(root, tmp_path / "clips", ClipsConfig(clip_len=4, snippets=3, strides=(1,), per_video=1))
        source = tmp_path / "clips"
    cfg = exact_cfg(sampler="strided", snippets=3, strides=(1,))
    shards = [data_shards._shard_dict(s) for s in data.open_source(source).split_shards("train")]
    samples = data_shards.tar_samples(data_shards.open_shards(shards, verify="off"))
    item = next(data_stages.pick(samples, data_stages.PickPlan(cfg=cfg, train=True), data_shards.EpochState()))
    calls = []
    real = dict(data_stages.DECODERS)
    monkeypatch.setitem(data_stages.DECODERS, "flow", lambda b: calls.append("flow") or real["flow"](b))
    monkeypatch.setitem(data_stages.DECODERS, "rgb", lambda b: calls.append("rgb") or real["rgb"](b))
    expected = [[real["flow"](b) for b in fields] for fields in item["flow"]]
    decoded = data_stages.decode_item(item)
    # 3 snippets of 4 fields a frame apart: fields t .. t+5 decoded once each (6, not 12); 3 frames.
    assert calls.count("flow") == 6 and calls.count("rgb") == 3
    for stack, planes in zip(decoded["flow"], expected):
        np.testing.assert_array_equal(np.asarray(stack), np.stack(planes).reshape(8, H, W))


def test_rgb_runs_of_F_frames_stack_on_channels_in_time_order(tmp_path):
    source = data.open_source(uneven_dataset(tmp_path / "ds"))
    cfg = exact_cfg(streams="rgb", rgb_frames=4, frame_stride=2)
    b = batches(data.make_loader(source, "train", cfg, train=True, steps=2), 1)[0]
    assert b["rgb"].shape == (2, 1, 1, 12, H, H)
    for run in b["rgb"][:, 0, 0].numpy():
        frames = [frame_index(run[3 * j:3 * j + 3]) for j in range(4)]
        assert [q - p for p, q in zip(frames, frames[1:])] == [2, 2, 2]


def test_clip_shards_with_snippets_read_back_equal_to_the_dense_dataset(tmp_path):
    from pipeline.clips import ClipsConfig, derive_clips

    root = uneven_dataset(tmp_path / "ds")
    derive_clips(root, tmp_path / "clips", ClipsConfig(clip_len=4, rgb_frames=3, snippets=2, strides=(3,),
                                                      per_video=2))
    cfg = exact_cfg(sampler="strided", snippets=2, strides=(3,), rgb_frames=3)
    loader = data.make_loader(data.open_source(tmp_path / "clips"), "train", cfg, train=True, steps=4)
    for b in batches(loader, 4):
        assert b["rgb"].shape == (2, 1, 2, 9, H, H) and b["flow"].shape == (2, 1, 2, 8, H, H)
        for rgb, flow in zip(b["rgb"][:, 0].numpy(), b["flow"][:, 0].numpy()):
            centres = [frame_index(r[3:6]) for r in rgb]  # frame F // 2 of each snippet
            assert centres[1] - centres[0] == 3
            for r, c in zip(rgb, centres):
                assert [frame_index(r[3 * j:3 * j + 3]) for j in range(3)] == [c - 1, c, c + 1]
            assert [round(field_dx(f)[0]) + 7 + 2 for f in flow] == centres
    with pytest.raises(data.SampleError, match="holds 2 snippet"):
        batches(data.make_loader(data.open_source(tmp_path / "clips"), "train", exact_cfg(rgb_frames=3),
                                 train=True, steps=1), 1)


def stream_keys(source, cfg, epoch: int, rank: int, world: int, worker: int, workers: int, steps: int,
                monkeypatch) -> list[str]:
    """The sample keys one simulated stream (rank x loader worker) uses in an epoch."""
    for name, value in (("RANK", rank), ("WORLD_SIZE", world), ("WORKER", worker), ("NUM_WORKERS", workers)):
        monkeypatch.setenv(name, str(value))
    state = data_shards.EpochState()
    state.epoch = epoch
    per_worker = -(-steps // workers)
    pipeline = data_loader.build_pipeline(source.split_shards("train"), cfg, train=True, state=state,
                                   block=per_worker * cfg.batch_size).with_epoch(per_worker)
    return [k for b in pipeline for k in b["key"]]


def test_every_sample_is_used_equally_often_across_ranks_workers_and_epochs(tmp_path, monkeypatch):
    source = data.open_source(uneven_dataset(tmp_path / "ds"))  # shards of 7, 3 and 1 samples
    cfg = exact_cfg(workers=2)
    steps = data.steps_per_epoch(source, "train", cfg, world_size=2)  # 11 // (2 x 2) = 2 batches per rank
    visits = {f"v{i:02d}": 0 for i in range(11)}
    for epoch in range(11):
        epoch_keys = []
        for rank in range(2):
            for worker in range(2):
                keys = stream_keys(source, cfg, epoch, rank, 2, worker, 2, steps, monkeypatch)
                assert len(keys) == 2  # one batch of 2 per worker: its whole block
                epoch_keys += keys
        # Streams read adjacent blocks: a sample repeats in an epoch only across a cycle boundary.
        assert max(epoch_keys.count(k) for k in epoch_keys) <= 2
        for k in epoch_keys:
            visits[k] += 1
    # 11 epochs x 4 streams x 2 samples = 88 reads = 8 whole cycles of the 11 samples.
    assert set(visits.values()) == {8}


def test_a_block_that_starts_inside_a_shard_still_hashes_all_of_it(tmp_path, monkeypatch):
    root = uneven_dataset(tmp_path / "ds")
    source = data.open_source(root)
    cfg = exact_cfg(workers=2, batch_size=5)
    # Worker 1 of 2, blocks of 5: its block starts at sample 5 of the first shard of cycle 0.
    spec, skip = next(data_shards.block_reads(list(source.split_shards("train")), cfg.seed, 5, 1))
    assert spec.name == "train-00000.tar" and skip == 5
    assert len(stream_keys(source, cfg, 0, 0, 1, 1, 2, 2, monkeypatch)) == 5
    # Its last byte changed: the stream read samples 0-4 without using them, hashed them,
    # and fails at the shard's end, naming it.
    path = root / "shards" / spec.name
    path.chmod(0o644)
    path.write_bytes(path.read_bytes()[:-1] + b"\x01")
    with pytest.raises(data.ShardHashError, match="train-00000.tar"):
        stream_keys(source, cfg, 0, 0, 1, 1, 2, 2, monkeypatch)
