"""Datasets read record by record through grain, batches still pure functions of (seed, step).

A random-access source (`tfds.data_source` over a TFDS build in ArrayRecord format, or ArrayRecord
shards a user wrote, read by `grain.sources.ArrayRecordDataSource`) is sampled by the in-memory
path's own global index sampler (`pipeline.epoch_indices`): global batch `step` is the records of
a seeded per-epoch permutation, so the data position in a checkpoint stays just the step and a
resumed run reads exactly the batches an uninterrupted one would. Each process reads and decodes
only its rows of the global batch (`pipeline.process_rows`).

Decoding runs in grain worker processes (`mp_prefetch`; grain starts them with `spawn`, so a
parent that already initialised JAX is safe): each worker makes whole batches for steps
start + i, start + i + W, ..., and grain interleaves them back in step order, so any worker count
gives the same batches. The loop's `Prefetcher` thread still asks for step -> batch and does the
device copy; `StepStream` serves those in-order requests from the grain iterator.

Small datasets stay in memory (the fast path: a PNG decode per record costs more than the MLP's
step on this CPU); `choose_source` picks by config.data.source and the split's size on disk.
"""

from __future__ import annotations

import atexit
import dataclasses
import json
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import grain
import ml_collections
import numpy as np
from absl import flags, logging
from array_record.python.array_record_module import ArrayRecordReader

from research.data import pipeline, spec, tfds_build
from research.errors import ConfigError

Batch = dict[str, np.ndarray]
Decode = Callable[[Any], dict[str, np.ndarray]]  # One record -> one example's arrays.
# (this process's rows of a batch, train?, step) -> the batch the model takes (per-batch ops).
Finish = Callable[[dict, bool, int], dict]
SOURCES = ('auto', 'memory', 'stream')
# data.source='auto' streams a split whose records take more than this on disk: decoded in memory
# it would be larger still, on every host.
STREAM_ABOVE_BYTES = 1 << 30
# The folder, inside data.data_dir, that holds TFDS builds made in ArrayRecord format for
# streaming (a data dir holds one build per dataset version, and the in-memory path reads the
# default tfrecord one).
ARRAY_RECORD_SUBDIR = 'array_record'


# --- Choosing the path ---------------------------------------------------------------------------

def choose_source(key: str, split_bytes: int | None) -> tuple[str, str]:
  """('memory' | 'stream', why) for config.data.source `key` and the split's bytes on disk."""
  if key not in SOURCES:
    raise ConfigError(f'config.data.source={key!r} is not one of {SOURCES}.')
  if key != 'auto':
    return key, f'config.data.source={key!r}'
  if split_bytes is not None and split_bytes > STREAM_ABOVE_BYTES:
    return 'stream', f'auto: {split_bytes / 2**20:.0f} MiB on disk > {STREAM_ABOVE_BYTES >> 20} MiB'
  size = 'size unknown' if split_bytes is None else f'{split_bytes / 2**20:.0f} MiB on disk'
  return 'memory', f'auto: {size} <= {STREAM_ABOVE_BYTES >> 20} MiB'


def tfds_split_bytes(data_dir: str, name: str, split: str) -> int | None:
  """The split's record bytes from the prepared build's dataset_info.json (no TFDS import, so the
  in-memory path stays TensorFlow-free); None if it is not built yet."""
  path = tfds_build.prepared_path(name, data_dir)
  if path is None:
    return None
  with open(os.path.join(path, 'dataset_info.json')) as f:
    splits = json.load(f).get('splits', [])
  base = split.split('[')[0]
  return next((int(s.get('numBytes', 0)) for s in splits if s.get('name') == base), None)


# --- Sources --------------------------------------------------------------------------------------

def check_record_files(paths: Sequence[str]) -> list[int]:
  """Each ArrayRecord file's record count; ConfigError naming the first file that is missing,
  truncated or corrupt. Opening a file reads its footer and index (a truncated file fails here);
  its first and last records are read too (their chunks' hashes are checked). A corrupt chunk in
  the middle of a large file is only found when it is read (`read_records` names the file)."""
  counts = []
  for path in paths:
    if not os.path.exists(path):
      raise ConfigError(f'Record file {path} does not exist.')
    try:
      reader = ArrayRecordReader(str(path))
      n = reader.num_records()
      if not reader.ok() or n == 0:
        raise RuntimeError('no readable records (truncated, or not an ArrayRecord file)')
      reader.read([0, n - 1])
      reader.close()
    except (RuntimeError, ValueError, TypeError) as e:
      raise ConfigError(
          f'Record file {path} ({os.path.getsize(path):,} bytes) is truncated or corrupt: '
          f'{str(e).strip() or type(e).__name__}. Rewrite it (or rebuild the dataset: delete its '
          'folder and run again); nothing was trained.') from e
    counts.append(n)
  return counts


class RecordFiles:
  """ArrayRecord shards a user wrote, as one random-access source: raw records (bytes), or what
  `decode(record)` makes of each (e.g. a dict of arrays, for get_data with data.source=stream).

  Checked on creation (`check_record_files`); a record that fails to read later raises a
  ConfigError naming its file. Picklable, so grain's worker processes can open it again."""

  def __init__(self, paths: Sequence[str], decode: Callable[[bytes], Any] | None = None):
    self.paths = [str(p) for p in paths]
    if not self.paths:
      raise ConfigError('No record files given.')
    self.decode = decode
    self.counts = check_record_files(self.paths)
    self._starts = np.cumsum([0] + self.counts)
    self._source = grain.sources.ArrayRecordDataSource(self.paths)

  def __len__(self) -> int:
    return int(self._starts[-1])

  def __getitem__(self, index: int):
    return self.__getitems__([index])[0]

  def __getitems__(self, indices: Sequence[int]) -> list:
    try:
      records = list(self._source.__getitems__(list(indices)))
    except RuntimeError as e:
      file = self.paths[int(np.searchsorted(self._starts, max(indices), 'right')) - 1]
      raise ConfigError(f'Record file {file} is corrupt: reading records {list(indices)[:4]}... '
                        f'failed: {str(e).strip() or type(e).__name__}.') from e
    return [self.decode(r) for r in records] if self.decode else records


def tfds_source(name: str, split: str, data_dir: str, manual_dir: str | None,
                required_files: tuple[str, ...] | None = None, download: bool = False):
  """`tfds.data_source` over the dataset built in ArrayRecord format (built first if needed, under
  `data_dir` if that build is ArrayRecord, else under `data_dir/array_record`); files checked."""
  import tensorflow_datasets as tfds  # Lazy: heavy, and only the streamed path needs it.

  prepared = tfds_build.get_builder(name, data_dir)
  stream_dir = data_dir
  if not (os.path.exists(os.path.join(str(prepared.data_path), 'dataset_info.json'))
          and prepared.info.file_format == tfds.core.FileFormat.ARRAY_RECORD):
    stream_dir = os.path.join(data_dir, ARRAY_RECORD_SUBDIR)
  with tfds_build.build_lock(stream_dir, name):
    builder = tfds_build.build(name, stream_dir, manual_dir, required_files, download,
                               file_format='array_record')
  check_record_files([str(p) for p in builder.info.splits[split].filepaths])
  return tfds.data_source(name, split=split, data_dir=stream_dir, download=False)


# --- Batches --------------------------------------------------------------------------------------

def read_records(source, indices: np.ndarray) -> list:
  """The records at `indices` (one batched read where the source has one)."""
  indices = [int(i) for i in indices]
  getitems = getattr(source, '__getitems__', None)
  return list(getitems(indices)) if getitems else [source[i] for i in indices]


def stack(examples: list[dict[str, np.ndarray]]) -> Batch:
  return {k: np.stack([np.asarray(e[k]) for e in examples]) for k in examples[0]}


@dataclasses.dataclass(frozen=True)
class TrainBatch:
  """step -> this process's rows of global batch `step`, read and decoded (picklable: it runs in
  grain's worker processes)."""

  source: Any
  decode: Decode
  seed: int
  batch_size: int
  rows: slice
  finish: Finish | None = None

  def __call__(self, step: int) -> Batch:
    idx = pipeline.epoch_indices(self.seed, int(step), self.batch_size, len(self.source))
    batch = stack([self.decode(r) for r in read_records(self.source, idx[self.rows])])
    return self.finish(batch, True, int(step)) if self.finish else batch


@dataclasses.dataclass(frozen=True)
class EvalBatch:
  """i -> this process's rows of eval batch i: padded with zeros past the end, 'mask' 0 there
  (as pipeline.padded_eval_batches)."""

  source: Any
  decode: Decode
  batch_size: int
  rows: slice
  finish: Finish | None = None

  def __call__(self, i: int) -> Batch:
    n = len(self.source)
    idx = np.arange(i * self.batch_size, (i + 1) * self.batch_size)[self.rows]
    valid = idx < n
    batch = stack([self.decode(r) for r in read_records(self.source, np.where(valid, idx, 0))])
    batch = {k: np.where(valid.reshape((-1,) + (1,) * (v.ndim - 1)), v, 0).astype(v.dtype)
             for k, v in batch.items()}
    batch['mask'] = valid.astype(np.float32)
    return self.finish(batch, False, 0) if self.finish else batch


def _exit_with_parent(worker_index: int, worker_count: int) -> None:
  """Runs in each grain worker: exit when the trainer is gone. Workers are daemons, so a normal
  exit ends them, but a trainer killed with SIGKILL would leave them polling a full queue."""
  parent = os.getppid()

  def watch():
    while os.getppid() == parent:
      time.sleep(0.5)
    os._exit(0)

  threading.Thread(target=watch, daemon=True, name='exit-with-parent').start()


def own(batch: Batch) -> Batch:
  """Plain arrays: a worker's batch arrives in shared memory, freed once this copy is made."""
  return {k: np.array(v) for k, v in batch.items()}


def batches(make: Callable[[int], Batch], start: int, stop: int, workers: int,
            buffer: int = 2) -> Iterator[Batch]:
  """make(start), make(start + 1), ..., make(stop - 1): made by `workers` grain processes (each
  makes every workers-th batch; grain interleaves them back in order), or here when 0."""
  # One batch at a time per process: grain's default (16 threads, 500 elements ahead) would
  # fight the trainer and the other workers for the cores and hold hundreds of batches.
  threads = grain.ReadOptions(num_threads=1, prefetch_buffer_size=buffer)
  ds = grain.MapDataset.range(start, stop).map(make).to_iter_dataset(threads)
  if workers:
    if not flags.FLAGS.is_parsed():  # grain's workers read its absl flags (defaults here) even
      flags.FLAGS.mark_as_parsed()  # when no absl app parsed them (a script, pytest).
    ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=workers,
                                                     per_worker_buffer_size=buffer),
                        worker_init_fn=_exit_with_parent)
  return iter(ds)


class StepStream:
  """step -> batch, as the loop's Prefetcher asks (start, start + 1, ...), served by grain.

  A call out of order (the first one, or a one-off such as the dry run sizing memory) is made in
  this process; the next call in order starts the workers from there. Every result is make(step),
  whichever way it was made."""

  def __init__(self, make: Callable[[int], Batch], workers: int, buffer: int = 2):
    self.make, self.workers, self.buffer = make, workers, buffer
    self._lock = threading.Lock()
    self._iterator: Iterator[Batch] | None = None
    self._next: int | None = None

  def __call__(self, step: int) -> Batch:
    with self._lock:
      if step != self._next:
        self.close()
        self._next = step + 1
        return self.make(step)
      if self._iterator is None:
        self._iterator = batches(self.make, step, np.iinfo(np.int64).max, self.workers,
                                 self.buffer)
        atexit.register(self.close)  # Before interpreter teardown, which grain's buffers dislike.
        logging.info('Streaming from step %d with %d worker processes.', step, self.workers)
      self._next = step + 1
      return own(next(self._iterator))

  def close(self) -> None:
    """Stops the workers (they also stop when this process exits, however it exits)."""
    if self._iterator is not None and hasattr(self._iterator, 'close'):
      self._iterator.close()
    self._iterator = None


def eval_batches(make: EvalBatch, workers: int) -> Iterator[Batch]:
  """The whole eval split once, in order."""
  count = -(-len(make.source) // make.batch_size)
  iterator = batches(make, 0, count, workers)
  try:
    yield from map(own, iterator)
  finally:
    if hasattr(iterator, 'close'):
      iterator.close()


# --- A streamed dataset ---------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Fields:
  """A TFDS record (a dict of decoded features) -> {'inputs', 'targets'} as stored."""

  inputs: str
  targets: str

  def __call__(self, example: dict) -> dict[str, np.ndarray]:
    return {'inputs': np.asarray(example[self.inputs]),
            'targets': np.asarray(example[self.targets], np.int32)}


def stream_dataset(config: ml_collections.ConfigDict, train_source, eval_source, decode: Decode,
                   meta: spec.Meta, process_index: int = 0, process_count: int = 1,
                   finish: Finish | None = None) -> spec.Dataset:
  """A `spec.Dataset` read from two random-access sources, each record made an example by
  `decode`, each batch finished by `finish` (both run in grain's workers: a module-level
  function or a dataclass instance, which they unpickle)."""
  workers = config.data.workers
  train = TrainBatch(train_source, decode, config.seed, config.batch_size,
                     pipeline.process_rows(config.batch_size, process_index, process_count),
                     finish)
  evals = EvalBatch(eval_source, decode, config.eval_batch_size,
                    pipeline.process_rows(config.eval_batch_size, process_index, process_count),
                    finish)
  return spec.Dataset(train_batch=StepStream(train, workers),
                      eval_batches=lambda: eval_batches(evals, workers),
                      num_eval_examples=len(eval_source), meta=meta)


def announce(name: str, kind: str, why: str, workers: int, process_index: int = 0) -> None:
  """The data path, stated once in the log (WORKDIR/log.txt)."""
  if process_index == 0:
    how = (f'streamed through grain ({workers} worker processes)' if kind == 'stream'
           else 'in memory')
    logging.info('Data: %s %s; %s.', name, how, why)
