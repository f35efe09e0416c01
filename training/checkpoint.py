"""Checkpoints: explicit dicts of state, written atomically, read with weights_only=True.

A checkpoint holds tensors and plain types only:
    {"format": 1, "model", "optimizer", "scheduler", "scaler": state dicts,
     "step": optimizer steps done, "epoch": last completed epoch (0-based),
     "config": the run's config as JSON types, "dataset_version": see dataset_version(),
     "dataset_name": the tag the version was opened by ("" for none; absent in older checkpoints),
     "rng": per rank, the torch (and CUDA) generator states, so dropout draws on as it would have,
     "position": only in a step checkpoint (written inside an epoch): {"epoch_step": batches of
        epoch "epoch" + 1 already trained, and the loader geometry they were drawn with:
        "world_size", "workers", "batch_size", "steps"}}
so torch.load(weights_only=True) reads it and loading never runs code from the file.
It is serialised to memory and written under a temporary name, then renamed: a crash
mid-write leaves the previous checkpoint intact.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import re
from pathlib import Path
from typing import cast

import torch

from pipeline import storage
from pipeline.build.manifest import DATASET_JSON, atomic_write_bytes
from pipeline.storage import Location

log = logging.getLogger(__name__)

FORMAT = 1
LAST = "last.pt"
EPOCH_FILE = re.compile(r"epoch_(\d{3,})\.pt")


def epoch_name(epoch: int) -> str:
    """File name of the checkpoint written after `epoch` (0-based)."""
    return f"epoch_{epoch:03d}.pt"


def dataset_version(folder: str | Path) -> str:
    """A dataset's identity: its dataset.json "version" if present, else the sha256 of dataset.json."""
    data = (Path(folder) / DATASET_JSON).read_bytes()
    version = json.loads(data).get("version")
    return str(version) if version else hashlib.sha256(data).hexdigest()


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The module inside DistributedDataParallel (state dict keys without "module.")."""
    # DDP holds the model as a submodule, which Module's __getattr__ types as "Tensor | Module"
    return cast(torch.nn.Module, model.module) if hasattr(model, "module") else model


def rng_state() -> dict:
    """This process's torch generator states (CPU, and CUDA when in use)."""
    state: dict[str, torch.Tensor | list[torch.Tensor]] = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["cpu"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def make_checkpoint(
    *,
    model,
    optimizer,
    scheduler,
    scaler,
    step: int,
    epoch: int,
    config: dict,
    dataset_version: str,
    rng: list[dict] | None = None,
    dataset_name: str = "",
    position: dict | None = None,
) -> dict:
    """The checkpoint dict of the current training state; `dataset_name` is the tag the dataset
    version was opened by ("OUTPUT@paper"), "" when it was opened by id or as the latest;
    `position` where inside an epoch a step checkpoint was taken (see the module docstring)."""
    json.dumps(config)  # fail early (TypeError) on anything weights_only loading would refuse
    extra = {"position": {k: int(v) for k, v in position.items()}} if position else {}
    return {
        **extra,
        "format": FORMAT,
        "model": unwrap(model).state_dict(),
        "optimizer": optimizer.state_dict() if optimizer is not None else {},
        "scheduler": scheduler.state_dict() if scheduler is not None else {},
        "scaler": scaler.state_dict() if scaler is not None else {},
        "step": int(step),
        "epoch": int(epoch),
        "config": config,
        "dataset_version": str(dataset_version),
        "dataset_name": str(dataset_name),
        "rng": rng if rng is not None else [rng_state()],
    }


def save_checkpoint(ckpt: dict, directory: Location, *, names: tuple[str, ...]) -> list[Location]:
    """Write `ckpt` atomically under each of `names` in `directory` (e.g. epoch_003.pt, last.pt).

    `directory` may be a local folder or a bucket prefix (an object appears only once its
    upload is complete).
    """
    directory = storage.location(directory)
    storage.makedirs(directory)
    buf = io.BytesIO()
    torch.save(ckpt, buf)
    data = buf.getvalue()
    paths = []
    for name in names:  # the stable name last, so it never points past a missing epoch file
        atomic_write_bytes(storage.join(directory, name), data)
        paths.append(storage.join(directory, name))
    log.info("saved checkpoint step %d epoch %d -> %s", ckpt["step"], ckpt["epoch"], ", ".join(names))
    return paths


def prune_epochs(directory: Location, newest: int, keep: int) -> list[Location]:
    """Remove the epoch checkpoints in `directory` older than the `keep` newest of this run (the
    run has written up to epoch_`newest`.pt); returns what was removed. keep=0 removes nothing.

    The run's own numbering decides, not the files' times: a file of a later epoch (left by an
    earlier, longer run in the same folder) is not this run's to remove. The newest kept is the
    one an elastic resize falls back to (jobs.runs.resume_point), so keep >= 1 always keeps it.
    """
    if keep <= 0:
        return []
    removed = []
    for name in storage.list_files(directory, ".pt"):
        match = EPOCH_FILE.fullmatch(name)
        if match and int(match.group(1)) <= newest - keep:
            removed.append(storage.join(directory, name))
            storage.remove(removed[-1])
    return removed


def load_checkpoint(path: Location) -> dict:
    """Read a checkpoint safely (weights_only=True, onto the CPU) and check its format.

    `path` may be a local file or an object (s3://...).
    """
    path = storage.location(path)
    if not storage.isfile(path):
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        ckpt = torch.load(io.BytesIO(storage.read_bytes(path)), map_location="cpu", weights_only=True)
    except Exception as exc:  # any file at all: the unpickler raises whatever the bytes lead it to
        raise ValueError(
            f"{path}: not a checkpoint (expected a flowshard checkpoint, a last.pt or epoch_NNN.pt "
            f"of `flowshard train`; torch.load: {type(exc).__name__}: {_first_line(exc)})"
        ) from exc
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise ValueError(f"{path}: not a flowshard checkpoint of format {FORMAT}")
    return ckpt


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else "no message"


def restore(
    ckpt: dict, *, model, optimizer=None, scheduler=None, scaler=None, rank: int | None = None, world_size: int = 1
) -> tuple[int, int]:
    """Load the state of `ckpt` into the given objects; returns (step, epoch).

    With `rank`, also this rank's generator state (rank 0's when the world size changed).
    """
    unwrap(model).load_state_dict(ckpt["model"])
    if optimizer is not None:
        optimizer.load_state_dict(ckpt["optimizer"])
    if scheduler is not None:
        scheduler.load_state_dict(ckpt["scheduler"])
    if scaler is not None and ckpt["scaler"]:
        scaler.load_state_dict(ckpt["scaler"])
    if rank is not None and ckpt.get("rng"):
        states = ckpt["rng"]
        if len(states) != world_size:
            log.warning(
                "checkpoint holds generator states of %d rank(s), this run has %d: all start from rank 0's",
                len(states),
                world_size,
            )
        set_rng_state(states[rank] if len(states) == world_size else states[0])
    return int(ckpt["step"]), int(ckpt["epoch"])
