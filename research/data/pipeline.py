"""Batches from in-memory arrays, as pure functions of (seed, step).

Every training batch is a function of the seed and the step alone, so the data position saved in a
checkpoint is just the step: a resumed run sees exactly the batches an uninterrupted run would, on
any number of processes. Each process gathers only its rows of the global batch.
"""

from __future__ import annotations

import functools
import queue
import threading
import time
from collections.abc import Callable, Iterator

import numpy as np

Batch = dict[str, np.ndarray]


def process_rows(global_batch: int, process_index: int, process_count: int) -> slice:
  if global_batch % process_count:
    raise ValueError(f'batch size {global_batch} does not divide over {process_count} processes.')
  per = global_batch // process_count
  return slice(process_index * per, (process_index + 1) * per)


@functools.lru_cache(maxsize=4)
def _epoch_permutation(seed: int, epoch: int, n: int) -> np.ndarray:
  return np.random.default_rng([seed, epoch]).permutation(n)


def epoch_indices(seed: int, step: int, batch_size: int, n: int) -> np.ndarray:
  """Example indices of global batch `step`: a fresh seeded permutation every epoch."""
  positions = np.arange(step * batch_size, (step + 1) * batch_size, dtype=np.int64)
  epochs, offsets = np.divmod(positions, n)
  out = np.empty(batch_size, dtype=np.int64)
  for epoch in np.unique(epochs):
    sel = epochs == epoch
    out[sel] = _epoch_permutation(seed, int(epoch), n)[offsets[sel]]
  return out


def shuffled_train_batch(arrays: Batch, step: int, *, seed: int, batch_size: int,
                         process_index: int = 0, process_count: int = 1) -> Batch:
  n = len(next(iter(arrays.values())))
  idx = epoch_indices(seed, step, batch_size, n)[process_rows(batch_size, process_index,
                                                              process_count)]
  return {k: v[idx] for k, v in arrays.items()}


def padded_eval_batches(arrays: Batch, *, batch_size: int, process_index: int = 0,
                        process_count: int = 1) -> Iterator[Batch]:
  """Every example exactly once; the last batch is padded with zeros and masked out."""
  n = len(next(iter(arrays.values())))
  rows = process_rows(batch_size, process_index, process_count)
  for start in range(0, n, batch_size):
    idx = np.arange(start, start + batch_size)[rows]
    valid = idx < n
    idx = np.where(valid, idx, 0)
    batch = {k: np.where(valid.reshape((-1,) + (1,) * (v.ndim - 1)), v[idx], 0).astype(v.dtype)
             for k, v in arrays.items()}
    batch['mask'] = valid.astype(np.float32)
    yield batch


class Prefetcher:
  """Makes the next batches on a background thread (host work and the device copy overlap the step).

  `wait_seconds` counts the time the loop spent blocked on input: the input-bound share of a run.
  """

  def __init__(self, make: Callable[[int], object], start_step: int, size: int = 2):
    self._queue: queue.Queue = queue.Queue(maxsize=size)
    self._stop = threading.Event()
    self.wait_seconds = 0.0
    self._thread = threading.Thread(target=self._fill, args=(make, start_step), daemon=True)
    self._thread.start()

  def _fill(self, make: Callable[[int], object], step: int) -> None:
    while not self._stop.is_set():
      try:
        item = (step, make(step), None)
      except Exception as e:  # Surfaced in the loop thread, not lost in this one.
        item = (step, None, e)
      while not self._stop.is_set():
        try:
          self._queue.put(item, timeout=0.1)
          break
        except queue.Full:
          continue
      if item[2] is not None:
        return
      step += 1

  def next(self) -> tuple[int, object]:
    t0 = time.perf_counter()
    step, batch, error = self._queue.get()
    self.wait_seconds += time.perf_counter() - t0
    if error is not None:
      raise error
    return step, batch

  def close(self) -> None:
    self._stop.set()
    self._thread.join(timeout=5)
