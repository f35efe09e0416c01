"""The unit writer for computed chunks, without Ray: chunks in any order, tars in plan order."""
import os
import random
from pathlib import Path

from pipeline import shard
from pipeline.build.assembly import ChunkSpool, UnitAssembler, VideoOutcome
from pipeline.build.config import BuildConfig, ShardConfig
from pipeline.build.plan import identify, plan_units
from pipeline.build.units import write_unit
from pipeline.decode import DecodeConfig
from pipeline.flow.config import FlowConfig
from pipeline.flow.estimators import make_estimator
from pipeline.inputs import discover
from pipeline.stages.chunks import chunk_jobs
from pipeline.stages.config import SampleConfig, WorkerConfig
from pipeline.stages.fields import process_chunks
from pipeline.stages.plan import plan_video
from pipeline.stages.samples import summarize
from pipeline.stages.video import process_video


def _cfg():
    return BuildConfig(worker=WorkerConfig(decode=DecodeConfig(resize="none"), flow=FlowConfig(algorithm="dis"),
                                           sample=SampleConfig(chunk_frames=4, max_frames=5)),
                       shard=ShardConfig(max_samples=8, max_bytes=1 << 16))


def _computed(ref, cfg, estimator):
    """The plan and encoded chunks of a video, as the Ray tasks would produce them."""
    plan = plan_video(ref, cfg.worker)
    chunks = [process_chunks([job], estimator, cfg.worker)[0] for job in chunk_jobs(ref, plan, cfg.worker)]
    return plan, chunks


def test_chunks_in_any_order_give_the_in_process_tars(motion_videos, tmp_path):
    cfg = _cfg()
    refs, _ = discover(str(motion_videos))
    unit = identify(plan_units(refs, cfg.shard), {}, cfg)[0]
    est = make_estimator(cfg.worker.flow)
    for out in ("a", "b"):
        (tmp_path / out / "shards").mkdir(parents=True)
    expected = write_unit(unit, (process_video(r, cfg.worker, est) for r in unit.compute_refs),
                          tmp_path / "a", cfg)

    computed = {r.key: _computed(r, cfg, est) for r in unit.compute_refs}
    events = [("chunk", r.key, c) for r in unit.compute_refs for c in computed[r.key][1]]
    random.Random(0).shuffle(events)  # chunks of every video interleaved, out of order
    writer = UnitAssembler()
    writer.begin(unit, tmp_path / "b", cfg)
    outcomes = []
    for _, key, chunk in events:
        writer.chunk(key, 1, chunk)
    assert len(list(Path(writer.spool.dir).iterdir())) == len(unit.compute_refs)  # held on disk, not in memory
    for r in reversed(unit.compute_refs):  # outcomes last video first: nothing can be written until the first
        plan, chunks = computed[r.key]
        outcomes.append(writer.video(r.key, 1, VideoOutcome(plan=plan, summaries=tuple(map(summarize, chunks)))))
    assert outcomes == [len(unit.compute_refs)] * (len(unit.compute_refs) - 1) + [0]
    assert writer.spool.reads == 0 and writer.spool.held_bytes == 0  # written from memory, then let go
    record = writer.finish()
    assert record == expected
    for s in record.shards:
        assert (tmp_path / "a" / "shards" / s.name).read_bytes() == (tmp_path / "b" / "shards" / s.name).read_bytes()
    assert len(record.shards) > 1  # the unit rolled over several tars


def test_a_newer_try_replaces_the_chunks_of_an_older_one_and_failures_are_rows(motion_videos, tmp_path):
    cfg = _cfg()
    refs, _ = discover(str(motion_videos))
    unit = identify(plan_units(refs[:2], cfg.shard), {}, cfg)[0]
    est = make_estimator(cfg.worker.flow)
    first, second = unit.compute_refs
    plan, chunks = _computed(first, cfg, est)
    (tmp_path / "shards").mkdir()
    writer = UnitAssembler()
    writer.begin(unit, tmp_path, cfg)
    writer.chunk(first.key, 1, chunks[0])  # a try later given up: a chunk of it arrived
    for c in chunks:
        writer.chunk(first.key, 2, c)
    writer.chunk(first.key, 1, chunks[1])  # late chunk of the old try: ignored
    writer.video(first.key, 2, VideoOutcome(plan=plan, summaries=tuple(map(summarize, chunks))))
    writer.video(second.key, 3, VideoOutcome(failure=f"{second.source}: lost", kind="transient"))
    record = writer.finish()
    rows = {r.id: r for r in record.videos}
    assert rows[first.key].status == "ok" and rows[first.key].frames == 12
    assert (rows[second.key].status, rows[second.key].error_kind) == ("error", "transient")
    keys = [s["__key__"] for r in record.shards for s in shard.iter_shard(tmp_path / "shards" / r.name)]
    assert keys == [f"{first.key}_part{k:03d}" for k in range(3)]


def test_spool_reads_back_in_chunk_order_and_cleans_up(motion_videos):
    cfg = _cfg()
    refs, _ = discover(str(motion_videos))
    _, chunks = _computed(refs[0], cfg, make_estimator(cfg.worker.flow))
    spool = ChunkSpool()
    for c in reversed(chunks):
        spool.add("v", c)
    assert [c.index for c in spool.read("v")] == [0, 1, 2] and list(spool.read("v")) == chunks
    assert spool.reads == 0  # held in memory
    spool.drop("v")
    assert list(spool.read("v")) == [] and spool.held_bytes == 0
    spool.close()
    assert not os.path.exists(spool.dir)


def test_chunks_beyond_the_memory_bound_are_read_back_from_the_spool(motion_videos):
    cfg = _cfg()
    refs, _ = discover(str(motion_videos))
    _, chunks = _computed(refs[0], cfg, make_estimator(cfg.worker.flow))
    one = sum(map(len, chunks[0].frame_bytes + chunks[0].flow_bytes))
    spool = ChunkSpool(hold_bytes=one)  # room for the first chunk only
    for c in chunks:
        spool.add("v", c)
    assert 0 < spool.held_bytes <= one
    assert list(spool.read("v")) == chunks and spool.reads == len(chunks)  # not all held: the disk copy
    spool.release("v")
    assert spool.held_bytes == 0 and list(spool.read("v")) == chunks  # the disk copy stays until close
    spool.close()


def test_a_writer_taking_over_a_spool_writes_the_same_tars(motion_videos, tmp_path):
    """A writer dies (nothing closed, the last chunk record cut short) with half its videos
    complete; a new one reopens the spool, reports those videos complete, takes the others and
    commits, in the background, the tars one writer alone would have written."""
    cfg = _cfg()
    refs, _ = discover(str(motion_videos))
    unit = identify(plan_units(refs, cfg.shard), {}, cfg)[0]
    est = make_estimator(cfg.worker.flow)
    (tmp_path / "a" / "shards").mkdir(parents=True)
    (tmp_path / "b" / "shards").mkdir(parents=True)
    expected = write_unit(unit, (process_video(r, cfg.worker, est) for r in unit.compute_refs), tmp_path / "a", cfg)
    computed = {r.key: _computed(r, cfg, est) for r in unit.compute_refs}

    def feed(writer, refs, attempt):
        for r in refs:
            plan, chunks = computed[r.key]
            writer.take([(r.key, attempt)] * len(chunks), [], *chunks)
            writer.take([], [(r.key, attempt, VideoOutcome(plan=plan, summaries=tuple(map(summarize, chunks))))])

    first = UnitAssembler(tag="t")
    folder = first.begin(unit, tmp_path / "b", cfg)
    done, rest = unit.compute_refs[:4], unit.compute_refs[4:]
    feed(first, done, 1)
    first.chunk(rest[0].key, 1, computed[rest[0].key][1][0])  # a video in progress: computed again
    with open(Path(folder) / f"{done[0].key}.chunks", "ab") as f:
        f.write(b"\x80\x05partial")  # a record the killed writer never finished, after whole ones
    del first  # killed: no abort, no close

    second = UnitAssembler(tag="t")
    assert second.resume(unit, tmp_path / "b", cfg, folder) == sorted(r.key for r in done)
    assert second.spool.reads == sum(len(computed[r.key][1]) for r in done)  # rewritten from the disk copy
    feed(second, rest, 2)
    second.finish_in_background()
    record = second.committed(unit.name)
    assert record == expected
    for s in record.shards:
        assert (tmp_path / "a" / "shards" / s.name).read_bytes() == (tmp_path / "b" / "shards" / s.name).read_bytes()
    assert not os.path.exists(folder)  # the spool goes once the unit is committed


def test_stale_spools_of_the_same_output_are_removed_and_this_runs_kept(tmp_path, monkeypatch):
    import tempfile

    from pipeline.build.assembly import SPOOL_PREFIX, remove_stale_spools, spool_tag

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    dead = ChunkSpool(spool_tag("s3://b/out", "deadrun")).dir
    mine = ChunkSpool(spool_tag("s3://b/out", "thisrun")).dir
    other = ChunkSpool(spool_tag("s3://b/other-output", "x")).dir  # another build's: not ours to touch
    (Path(dead) / "flowshard-u.tar.tmp").write_bytes(b"a temporary tar")
    assert remove_stale_spools(spool_tag("s3://b/out", "thisrun")) == 1
    assert not os.path.exists(dead) and os.path.isdir(mine) and os.path.isdir(other)
    assert all(p.name.startswith(SPOOL_PREFIX) for p in tmp_path.iterdir())
