"""Pair-level batching for a flow actor: batches of B frame pairs, filled from whatever chunks
(of whatever videos) are queued, with each pair's field handed back to its own chunk.

Callers `submit` a chunk's frames and the (from, to) rows of its pairs and get a future. One
worker thread takes batches of up to B pairs of one frame size from the queue, oldest pair
first, and runs them through the estimator's overlapped path (pipeline.flow.device): it
stages batch k+1 (copy in) before launching batch k, and collects batch k-1 (copy out) after,
so copies overlap compute on a GPU. A chunk's future resolves when its last pair has landed,
with its (P, H, W, 2) uint8 quantized fields in pair order.

A batch smaller than B runs only when the device would otherwise idle: the worker waits up
to `linger` seconds for more pairs, and never holds a finished batch back waiting for input.
Each pair's flow does not depend on the pairs beside it in a batch (every step is a per-pair
tensor op), so the bytes equal those of computing each chunk on its own (tests check this).
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field

import numpy as np

from pipeline.flow.quantize import DEFAULT_BOUND, quantize

log = logging.getLogger(__name__)


class SyncStages:
    """The stage / launch / result path over an estimator that has only the float contract
    (the OpenCV ones): no overlap, quantized on the host."""

    def __init__(self, estimator) -> None:
        self.estimator = estimator

    def stage(self, prev: np.ndarray, nxt: np.ndarray):
        return prev, nxt

    def launch(self, staged, bound: float = DEFAULT_BOUND) -> np.ndarray:
        return quantize(self.estimator(*staged), bound)

    def result(self, pending: np.ndarray) -> np.ndarray:
        return pending


def staged_path(estimator):
    """The estimator itself where it has the overlapped path, else a `SyncStages` over it."""
    return estimator if hasattr(estimator, "stage") else SyncStages(estimator)


@dataclass(eq=False)
class _Chunk:
    frames: np.ndarray
    pairs: Sequence[tuple[int, int]]
    out: np.ndarray
    future: Future
    left: int


@dataclass
class _Batch:
    """Up to B pairs of one frame size: (chunk, pair position) per pair, and their frames."""

    items: list[tuple[_Chunk, int]]
    prev: np.ndarray
    nxt: np.ndarray


@dataclass
class BatcherStats:
    """What the worker did (for logs and tests): batches run and pairs per batch."""

    batches: int = 0
    pairs: int = 0
    sizes: list[int] = field(default_factory=list)


class PairBatcher:
    """Runs queued pairs of many chunks through one estimator in batches of B (module docstring).

    batch_size: an int, or a function of (height, width) giving B for frames of that size.
    """

    def __init__(
        self,
        estimator,
        *,
        bound: float = DEFAULT_BOUND,
        batch_size: int | Callable[[int, int], int] = 16,
        linger: float = 0.002,
    ) -> None:
        if isinstance(batch_size, int) and batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.path = staged_path(estimator)
        self.bound, self.linger = bound, linger
        self._batch_size = batch_size if callable(batch_size) else (lambda _h, _w: batch_size)
        self._queues: dict[tuple, deque] = {}  # frame shape -> (seq, chunk, pair position)
        self._seq = itertools.count()
        self._cond = threading.Condition()
        self._closed = False
        self.stats = BatcherStats()
        self._thread = threading.Thread(target=self._run, name="pair-batcher", daemon=True)
        self._thread.start()

    # -- callers ----------------------------------------------------------------------------------
    def submit(self, frames: np.ndarray, pairs: Sequence[tuple[int, int]]) -> Future:
        """Queue a chunk's pairs (rows into `frames`); the future gives (P, H, W, 2) uint8 fields."""
        frames = np.asarray(frames)
        if frames.dtype != np.uint8 or frames.ndim not in (3, 4):
            raise ValueError(f"frames must be (F, H, W[, 3]) uint8, got {frames.dtype} {frames.shape}")
        for a, b in pairs:
            if not (0 <= a < len(frames) and 0 <= b < len(frames)):
                raise ValueError(f"pair ({a}, {b}) is outside the chunk's {len(frames)} frames")
        h, w = frames.shape[1:3]
        fut: Future = Future()
        chunk = _Chunk(
            frames=frames, pairs=list(pairs), out=np.empty((len(pairs), h, w, 2), np.uint8), future=fut, left=len(pairs)
        )
        if not pairs:
            fut.set_result(chunk.out)
            return fut
        with self._cond:
            if self._closed:
                raise RuntimeError("the pair batcher is closed")
            queue = self._queues.setdefault(frames.shape[1:], deque())
            queue.extend((next(self._seq), chunk, i) for i in range(len(pairs)))
            self._cond.notify_all()
        return fut

    def compute(self, frames: np.ndarray, pairs: Sequence[tuple[int, int]]) -> np.ndarray:
        """submit() and wait for the fields."""
        return self.submit(frames, pairs).result()

    def close(self) -> None:
        """Finish the queued pairs, then stop the worker thread."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join()

    def __enter__(self) -> PairBatcher:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- the worker thread --------------------------------------------------------------------------
    def _run(self) -> None:
        staged, pending = None, None  # (staged batch, _Batch); (launched batch, _Batch)
        while True:
            if staged is None:
                batch = self._take(wait=pending is None)
                if batch is None:
                    if pending is not None:
                        self._deliver(*pending)
                        pending = None
                        continue
                    return  # closed and drained
                staged = self._guard(batch, lambda b: (self.path.stage(b.prev, b.nxt), b))
                if staged is None:
                    continue
            ahead = self._take(wait=False)  # a full batch already queued: copy it in now
            upcoming = self._guard(ahead, lambda b: (self.path.stage(b.prev, b.nxt), b)) if ahead else None
            launched = self._guard(staged[1], lambda b, staged=staged: (self.path.launch(staged[0], self.bound), b))
            if pending is not None:
                self._deliver(*pending)
            pending, staged = launched, upcoming

    def _take(self, wait: bool) -> _Batch | None:
        """The next batch: the oldest pair's frame size, up to B pairs of it.

        wait=False: only a full batch, else None. wait=True: block until pairs are queued (None
        once closed and empty), then wait up to `linger` for a full batch before taking fewer.
        """
        deadline = None
        with self._cond:
            while True:
                shape = self._oldest_shape()
                if shape is None:
                    if not wait or self._closed:
                        return None
                    self._cond.wait()
                    continue
                size = self._batch_size(*shape[:2])
                if len(self._queues[shape]) >= size:
                    return self._pop(shape, size)
                if not wait:
                    return None
                deadline = deadline or time.monotonic() + self.linger
                left = deadline - time.monotonic()
                if self._closed or left <= 0:
                    return self._pop(shape, size)
                self._cond.wait(left)

    def _oldest_shape(self):
        heads = [(q[0][0], shape) for shape, q in self._queues.items() if q]
        return min(heads)[1] if heads else None

    def _pop(self, shape: tuple, size: int) -> _Batch:
        queue = self._queues[shape]
        items = [queue.popleft()[1:] for _ in range(min(size, len(queue)))]
        prev = np.stack([c.frames[c.pairs[i][0]] for c, i in items])
        nxt = np.stack([c.frames[c.pairs[i][1]] for c, i in items])
        self.stats.batches += 1
        self.stats.pairs += len(items)
        self.stats.sizes.append(len(items))
        return _Batch(items=items, prev=prev, nxt=nxt)

    def _guard(self, batch: _Batch, fn):
        """fn(batch), or None after failing the batch's chunks with the error (the worker goes on)."""
        try:
            return fn(batch)
        except Exception as exc:  # any error: handed to every caller waiting on these pairs
            log.exception("flow batch of %d pairs failed", len(batch.items))
            for chunk, _ in batch.items:
                if not chunk.future.done():
                    chunk.future.set_exception(exc)
            return None

    def _deliver(self, pending, batch: _Batch) -> None:
        fields = self._guard(batch, lambda _b: self.path.result(pending))
        if fields is None:
            return
        for (chunk, i), q in zip(batch.items, fields, strict=True):
            chunk.out[i] = q
            chunk.left -= 1
            if chunk.left == 0 and not chunk.future.done():
                chunk.future.set_result(chunk.out)
