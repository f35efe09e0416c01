"""Training across a Ray cluster: the same training loop (jobs.train) inside Ray Train's
TorchTrainer (the Train V2 API), one process per worker, DDP across nodes.

    flowshard train DATASET --output s3://bucket/runs/r3d --ray-workers 16 --ray-gpus-per-worker 1 \\
        --address auto --max-failures 3 --checkpoint-every-steps 500
    ray job submit --address http://HEAD:8265 -- python -m jobs.train_on_ray --config run.json \\
        --ray-workers 8-16 --max-failures 3

What runs where. The driver (this module) starts or joins Ray (pipeline.cluster.startup)
and the TorchTrainer; each Ray Train worker runs `train_loop`: jobs.train.train with the
process group Ray Train set up (gloo on CPU, nccl on GPU; RANK/WORLD_SIZE/LOCAL_RANK are
set by it, so training.distributed sees an ordinary DDP rank). Each rank reads its own block
of the shards through the same loader (training.data.shards.EpochBlocks), equal batches
per rank; training itself stays Ray-free.

Storage. OUTPUT is Ray Train's run folder: RunConfig(storage_path=parent of OUTPUT,
name=its last part), local or s3://. Rank 0 writes the run folder exactly as a plain run
does (last.pt, epoch_NNN.pt, config.json, train.log, eval_epoch_NNN.json, tb/,
train_summary.json), so `flowshard evaluate` and `--resume` read it unchanged; beside them
Ray Train keeps its own state and, per reported checkpoint, a checkpoint_* folder holding
flowshard.json, which names the checkpoint file and its step (the weights are not stored
twice).

Fault tolerance. FailureConfig(max_failures=K): when a worker process dies (or its node
goes), Ray Train restarts the group; the restarted workers find Ray Train's latest checkpoint
and resume from OUTPUT/last.pt, written at every epoch end and every
--checkpoint-every-steps steps. Every rank waits at each checkpoint until Ray Train has
committed it (report_checkpoint says why), so a rank that dies after a checkpoint cannot
take it with it. A step checkpoint records how far into its epoch it is, and
the loader skips exactly the batches already trained (training.data.stages.skip_done): no
sample used twice, none skipped.

Elastic. --ray-workers MIN-MAX: ScalingConfig(num_workers=(MIN, MAX)); Ray Train starts as
many workers as the cluster has room for and restarts the group larger or smaller when
nodes come and go (a node lost without a preemption notice counts against --max-failures).
The rule: the global batch stays the same, --batch-size x MAX, split evenly over the
workers of the moment (so it must divide by every size from MIN to MAX), and the learning
rate and schedule stay as given. A group whose size differs from a step checkpoint's goes
back to the start of that epoch (jobs.runs.resume_point): each epoch is drawn by one group,
so the equal-use guarantee holds. Every report names the group's size (world_size).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import logging
import os
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pipeline import storage

log = logging.getLogger(__name__)

MARKER = "flowshard.json"  # in each Ray Train checkpoint folder: which run-folder file it stands for
SUMMARY = "train_summary.json"


@dataclass(frozen=True, kw_only=True)
class RayTrainConfig:
    """How wide and where a run on Ray Train goes."""

    min_workers: int
    max_workers: int
    gpus_per_worker: float = 0.0
    cpus_per_worker: float = 1.0
    address: str | None = None  # None: a local Ray on loopback; "auto" or "ray://HEAD:10001": a cluster
    max_failures: int = 0
    elastic_interval_s: float = 60.0  # how often an elastic group looks for room to grow

    def __post_init__(self) -> None:
        if not 1 <= self.min_workers <= self.max_workers:
            raise ValueError(f"ray workers must be 1 <= MIN <= MAX, got {self.min_workers}-{self.max_workers}")
        if self.gpus_per_worker < 0 or self.cpus_per_worker < 0:
            raise ValueError(f"gpus/cpus per worker must be >= 0, got {self.gpus_per_worker}, {self.cpus_per_worker}")
        if self.max_failures < -1:
            raise ValueError(f"max_failures must be >= -1 (-1: retry forever), got {self.max_failures}")

    @property
    def elastic(self) -> bool:
        return self.min_workers != self.max_workers


def parse_workers(text: str) -> tuple[int, int]:
    """ "N" -> (N, N); "MIN-MAX" -> (MIN, MAX) (ValueError naming the text)."""
    low, sep, high = str(text).partition("-")
    try:
        pair = (int(low), int(high)) if sep else (int(low), int(low))
    except ValueError:
        raise ValueError(f"--ray-workers takes N or MIN-MAX, got {text!r}") from None
    return pair


def check_global_batch(batch_size: int, ray_cfg: RayTrainConfig) -> int:
    """The global batch (batch_size x MAX), which must split evenly over every group size."""
    total = batch_size * ray_cfg.max_workers
    bad = [n for n in range(ray_cfg.min_workers, ray_cfg.max_workers + 1) if total % n]
    if bad:
        raise ValueError(
            f"the global batch {batch_size} x {ray_cfg.max_workers} = {total} does not split evenly over "
            f"{bad} workers: choose --batch-size or --ray-workers so that it does"
        )
    return total


def group_config(cfg, world_size: int, max_workers: int):
    """`cfg` for a group of `world_size` workers: the same global batch (cfg's per-rank batch at
    max_workers), split evenly."""
    per_rank = cfg.data.batch_size * max_workers // world_size
    if per_rank == cfg.data.batch_size:
        return cfg
    log.info(
        "%d of at most %d workers: batch %d per rank (global batch %d)",
        world_size,
        max_workers,
        per_rank,
        per_rank * world_size,
    )
    return dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, batch_size=per_rank))


# --- inside each Ray Train worker --------------------------------------------------------


def train_loop(config: dict) -> None:
    """One Ray Train worker: jobs.train.train in the process group Ray Train set up."""
    import ray.train

    from jobs.train import train
    from training.config import TrainConfig

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger().setLevel(logging.INFO)  # Ray's worker set-up configured the root logger first
    storage.configure(config.get("storage_options") or {})
    cfg = group_config(
        TrainConfig.from_dict(config["train"]), ray.train.get_context().get_world_size(), config["max_workers"]
    )
    committed = ray.train.get_checkpoint()
    if committed is not None:
        # A restarted group: go on from the run's last.pt, which is at least as new as Ray
        # Train's last committed checkpoint (rank 0 writes it before every report).
        log.info(
            "restarted by Ray Train (its last committed checkpoint: step %s): resuming from %s",
            committed_step(committed),
            storage.join(storage.location(cfg.output), "last.pt"),
        )
        cfg = dataclasses.replace(cfg, resume="last")
    train(cfg, progress=False, report=functools.partial(report_checkpoint, output=cfg.output))


def committed_step(committed) -> int | None:
    """The step a Ray Train checkpoint folder stands for (its MARKER), None if it has none."""
    with committed.as_directory() as folder:
        path = os.path.join(folder, MARKER)
        if not os.path.isfile(path):
            return None
        with open(path) as f:
            return json.load(f).get("step")


def report_checkpoint(metrics: dict, name: str | None, *, output: str) -> None:
    """Tell Ray Train of a checkpoint (every rank calls this; rank 0 passes the file it wrote in
    `output`) and wait until Ray Train has committed it.

    Why wait: ray.train.report only queues a rank's report in its own process; the controller
    collects the queues when it next polls the workers (every RAY_TRAIN_HEALTH_CHECK_INTERVAL_S,
    2 s by default) and registers the checkpoint only once every rank's report of that round is
    in. A rank that dies before that poll (a SIGKILL just after its report, a spot node gone)
    takes its queued report with it, the round is never registered, and the restarted group's
    ray.train.get_checkpoint() is None (or an older one): it would train again from there.
    Waiting for the commit (CheckpointConsistencyMode.COMMITTED) costs up to one poll interval
    per checkpoint; in return no rank trains past a checkpoint a restart would not find.
    """
    import ray.train

    values = {k: v for k, v in metrics.items() if isinstance(v, (int, float))}
    if name is None:
        ray.train.report(values)
    else:
        with tempfile.TemporaryDirectory(prefix="flowshard-ckpt-") as folder:
            with open(os.path.join(folder, MARKER), "w") as f:
                json.dump({"checkpoint": name, **values}, f)
            ray.train.report(
                values,
                checkpoint=ray.train.Checkpoint.from_directory(folder),
                checkpoint_dir_name=free_dir_name(output, int(values["step"])),
            )
    ray.train.get_all_reported_checkpoints(consistency_mode=ray.train.CheckpointConsistencyMode.COMMITTED)


def free_dir_name(output: str, step: int) -> str:
    """Rank 0's name for the Ray Train checkpoint folder of `step` in the run folder `output` (Ray
    Train takes rank 0's): checkpoint_step_NNNNNNNNN, or with _2, _3, ... when that one is there.

    A group that went back to its epoch's start (an elastic group of another size) reaches the
    same steps again; reported under the same name, Ray Train would copy into the folder it
    still lists and, when it drops the older entry, delete the folder the newer one names.
    """
    out = storage.location(output)
    base = f"checkpoint_step_{step:09d}"
    name, n = base, 1
    while storage.exists(storage.join(out, name)):
        n += 1
        name = f"{base}_{n}"
    return name


# --- the driver --------------------------------------------------------------------------


def storage_of(output: str) -> dict:
    """RunConfig's storage arguments for OUTPUT: Ray Train's run folder is OUTPUT itself.

    Object storage goes through flowshard's own filesystem (pipeline.storage: the same
    endpoint, credentials and retries as every other read and write), wrapped for pyarrow.
    """
    out = storage.location(output)
    if not storage.is_remote(out):
        out = Path(out).resolve()
        return {"storage_path": str(out.parent), "name": out.name}
    import pyarrow.fs

    fs, path = storage.filesystem(str(out))
    parent, _, name = path.rstrip("/").rpartition("/")
    return {
        "storage_path": parent,
        "name": name,
        "storage_filesystem": pyarrow.fs.PyFileSystem(pyarrow.fs.FSSpecHandler(fs)),
    }


def make_trainer(cfg, ray_cfg: RayTrainConfig, loop: Callable[[dict], None] = train_loop):
    """The TorchTrainer of a run (Train V2 API)."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    check_global_batch(cfg.data.batch_size, ray_cfg)
    use_gpu = ray_cfg.gpus_per_worker > 0
    if use_gpu != cfg.device.startswith("cuda"):
        raise ValueError(
            f"--device {cfg.device} with {ray_cfg.gpus_per_worker} GPUs per Ray worker: "
            "give GPUs to train on cuda, none to train on cpu"
        )
    if ray_cfg.elastic and ray_cfg.max_failures == 0:
        log.warning(
            "an elastic group with --max-failures 0 ends when a node goes away without a preemption "
            "notice (Ray Train counts that as a worker failure): give --max-failures N or -1"
        )
    resources = {"CPU": ray_cfg.cpus_per_worker, **({"GPU": ray_cfg.gpus_per_worker} if use_gpu else {})}
    workers = (ray_cfg.min_workers, ray_cfg.max_workers) if ray_cfg.elastic else ray_cfg.max_workers
    # mypy reads Train V1's ScalingConfig; V2's (RAY_TRAIN_V2_ENABLED) takes a (min, max) range.
    scaling = ScalingConfig(  # type: ignore[call-arg]
        num_workers=workers,  # type: ignore[arg-type]
        use_gpu=use_gpu,
        resources_per_worker=resources,
        elastic_resize_monitor_interval_s=ray_cfg.elastic_interval_s,
    )
    run_cfg = RunConfig(
        failure_config=FailureConfig(max_failures=ray_cfg.max_failures),
        checkpoint_config=CheckpointConfig(num_to_keep=2),
        **storage_of(cfg.output),
    )
    config = {"train": cfg.to_dict(), "max_workers": ray_cfg.max_workers, "storage_options": _storage_options()}
    return TorchTrainer(
        loop,
        train_loop_config=config,
        scaling_config=scaling,
        run_config=run_cfg,
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
    )


def _storage_options() -> dict:
    """The object-storage settings of this process (--storage-options), for the workers."""
    from pipeline.store import config as store_config

    return {p: store_config.options_for(p) for p in ("s3", "gs", "az") if store_config.options_for(p)}


def train_on_ray(cfg, ray_cfg: RayTrainConfig, loop: Callable[[dict], None] = train_loop) -> dict:
    """Run `cfg` on Ray Train as `ray_cfg` says; returns rank 0's train summary."""
    from pipeline.cluster.startup import RayConfig, init_ray

    trainer = make_trainer(cfg, ray_cfg, loop)
    init_ray(RayConfig(address=ray_cfg.address))
    result = trainer.fit()
    if result.error is not None:
        raise result.error
    return json.loads(storage.read_bytes(storage.join(storage.location(cfg.output), SUMMARY)))


def run_command(
    cfg, *, ray_workers: str, ray_gpus_per_worker: float = 0.0, address: str | None = None, max_failures: int = 0
) -> dict:
    """`flowshard train ... --ray-workers N|MIN-MAX`: the options as the train command takes them."""
    low, high = parse_workers(ray_workers)
    return train_on_ray(
        cfg,
        RayTrainConfig(
            min_workers=low,
            max_workers=high,
            gpus_per_worker=ray_gpus_per_worker,
            address=address,
            max_failures=max_failures,
        ),
    )


# --- `python -m jobs.train_on_ray --config FILE` (for `ray job submit`) ------------------


def main(argv: list[str] | None = None) -> dict:
    """Train the resolved configuration FILE (config.json of a run, or `flowshard train --config`'s
    format) on Ray Train."""
    from training.config import TrainConfig

    parser = argparse.ArgumentParser(prog="python -m jobs.train_on_ray", description=main.__doc__)
    parser.add_argument("--config", required=True, help="A resolved training configuration (JSON or YAML).")
    parser.add_argument("--ray-workers", default="1", help="N, or MIN-MAX for an elastic group.")
    parser.add_argument("--ray-gpus-per-worker", type=float, default=0.0)
    parser.add_argument("--address", default=os.environ.get("RAY_ADDRESS") or "auto")
    parser.add_argument("--max-failures", type=int, default=0)
    parser.add_argument("--checkpoint-every-steps", type=int, default=None)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    cfg = TrainConfig.from_dict(read_config(args.config))
    if args.checkpoint_every_steps is not None:
        cfg = dataclasses.replace(cfg, checkpoint_every_steps=args.checkpoint_every_steps)
    low, high = parse_workers(args.ray_workers)
    ray_cfg = RayTrainConfig(
        min_workers=low,
        max_workers=high,
        gpus_per_worker=args.ray_gpus_per_worker,
        address=args.address,
        max_failures=args.max_failures,
    )
    summary = train_on_ray(cfg, ray_cfg)
    sys.stdout.write(json.dumps({"steps": summary["steps"], "eval": summary["eval"]}) + "\n")  # the job's result
    return summary


def read_config(path: str) -> dict:
    """A resolved configuration file: JSON, or YAML (a superset)."""
    import yaml

    data = yaml.safe_load(storage.read_text(storage.location(path)))
    if not isinstance(data, dict):
        raise ValueError(f"{path}: not a training configuration (a mapping)")
    return data


if __name__ == "__main__":
    main()
