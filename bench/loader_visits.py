"""How often each training sample is used: per-sample visit counts over epochs, many ranks.

    python bench/loader_visits.py [--ranks 8 --workers 4 --epochs 10 --shards 60 --batch 8]

Writes `--shards` tar shards of tiny samples with uneven counts (seeded, 5 to
`--max-samples` each), then simulates every rank x loader worker stream of a DDP run for each epoch: the
training loader's first stages (shard list or epoch block -> open + hash -> tar samples) run
with RANK/WORLD_SIZE/WORKER/NUM_WORKERS set as torchrun and the DataLoader would set them,
and each stream uses what the training loop takes from it (ceil(steps / workers) batches).
Two designs side by side on the same shards:

  blocks     this loader (manifest sources): stream g of G reads block epoch * G + g of
             the endless sequence of seeded shard cycles (training.data.shards.EpochBlocks)
  resampled  shards drawn with replacement per epoch, split by node and worker, each
             stream restarting every epoch (the loader's URL-list path, and the design
             this loader used before blocks)

Reported per design: visits per sample (min, max, max/min), samples never used, shards
whose last sample was never reached (so their streamed hash was never checked), and samples
read per sample used (a block that starts inside a shard reads and hashes that shard's
earlier samples without using them).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import random
import sys
import tempfile
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline import shard  # noqa: E402
from training import data  # noqa: E402
from training.data import loader as data_loader  # noqa: E402
from training.data import shards as data_shards  # noqa: E402


def write_shards(root: Path, count: int, seed: int, most: int) -> list[data.ShardSpec]:
    """`count` shards of json-only samples with uneven sample counts (5 to `most`)."""
    rng = random.Random(seed)
    specs = []
    n = 0
    for i in range(count):
        samples = [{"__key__": f"s{n + j:06d}", "json": b"{}"} for j in range(rng.randint(5, most))]
        n += len(samples)
        rec = shard.write_shard(samples, root / f"train-{i:05d}.tar")
        specs.append(data.ShardSpec(name=rec.name, url=str(root / rec.name), split="train", samples=rec.samples,
                                    sha256=rec.sha256))
    return specs


def stream_samples(specs, cfg, epoch: int, rank: int, ranks: int, worker: int, workers: int, block: int,
                   blocks: bool) -> tuple[list[str], set[str], int]:
    """The keys one stream uses in an epoch, the shards it read to their end, and the
    samples it read without using them (a block's start inside a shard)."""
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(ranks), WORKER=str(worker), NUM_WORKERS=str(workers))
    state = data_shards.EpochState()
    state.epoch = epoch
    # Without sample counts (a URL list) the loader falls back to resampled shards.
    listed = specs if blocks else [dataclasses.replace(s, samples=0) for s in specs]
    stages = data_loader.shard_stages(listed, cfg, train=True, state=state, block=block)
    src = stages[0]()
    for stage in stages[1:]:
        src = stage(src)
    finished: set[str] = set()
    keys: list[str] = []
    skipped = 0
    for shard_dict in data_shards.open_shards(src, verify="stream"):
        stream = shard_dict["stream"]
        skipped += shard_dict.get("skip", 0)
        for sample in data_shards.tar_samples([shard_dict]):
            keys.append(sample["__key__"])
            if len(keys) == block:
                return keys, finished, skipped
        finished.add(stream.name)
    return keys, finished, skipped


def run(specs, args, blocks: bool) -> dict:
    total = sum(s.samples for s in specs)
    cfg = data.DataConfig(batch_size=args.batch, workers=args.workers)
    steps = max(1, total // (args.batch * args.ranks))
    block = math.ceil(steps / args.workers) * args.batch
    visits: Counter = Counter()
    hashed: set[str] = set()
    skipped = 0
    for epoch in range(args.epochs):
        for rank in range(args.ranks):
            for worker in range(args.workers):
                keys, finished, skips = stream_samples(specs, cfg, epoch, rank, args.ranks, worker, args.workers,
                                                       block, blocks)
                visits.update(keys)
                hashed |= finished
                skipped += skips
    counts = [visits.get(f"s{i:06d}", 0) for i in range(total)]
    low, high = min(counts), max(counts)
    return {"design": "blocks" if blocks else "resampled", "samples": total, "shards": len(specs),
            "reads": sum(counts), "min_visits": low, "max_visits": high,
            "max_over_min": round(high / low, 3) if low else math.inf, "never_used": counts.count(0),
            "shards_never_hashed": len(specs) - len(hashed), "block": block,
            "read_per_used": round((sum(counts) + skipped) / sum(counts), 3)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ranks", type=int, default=8)
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--shards", type=int, default=60)
    p.add_argument("--max-samples", type=int, default=120, help="Samples per shard are drawn from 5 to this.")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None, help="Also write the rows to this JSON file.")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        specs = write_shards(Path(tmp), args.shards, args.seed, args.max_samples)
        rows = [run(specs, args, blocks=True), run(specs, args, blocks=False)]
    print(f"{args.ranks} ranks x {args.workers} workers, {args.epochs} epochs, batch {args.batch}, "
          f"{rows[0]['samples']} samples in {rows[0]['shards']} shards")
    print("| design | samples used | min visits | max visits | max/min | never used | shards never hashed | "
          "samples read per used |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['design']} | {r['reads']} | {r['min_visits']} | {r['max_visits']} | {r['max_over_min']} | "
              f"{r['never_used']} | {r['shards_never_hashed']} | {r['read_per_used']} |")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
