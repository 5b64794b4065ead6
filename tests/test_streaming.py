"""Streaming through grain (research/data/streaming.py): batches as pure functions of (seed, step),
process rows, eval coverage, workers, and bad record files. ArrayRecord shards written here."""

import numpy as np
import pytest
from helpers import decode_record as decode
from helpers import record_features as features
from helpers import store_toy_tfds
from helpers import write_record_shards as write_shards

from research import data
from research.config import base_config
from research.data import pipeline, streaming
from research.errors import ConfigError

N = 53  # Records (write_shards' default): not a multiple of any batch size used here.


@pytest.fixture(scope='module')
def shards(tmp_path_factory):
  return write_shards(tmp_path_factory.mktemp('shards'))


def config(seed=0, batch_size=8, eval_batch_size=10, workers=0):
  c = base_config()
  c.seed, c.batch_size, c.eval_batch_size, c.data.workers = seed, batch_size, eval_batch_size, \
      workers
  return c


def dataset(shards, process_index=0, process_count=1, **kw):
  source = streaming.RecordFiles(shards)
  return streaming.stream_dataset(config(**kw), source, source, decode, meta=None,
                                  process_index=process_index, process_count=process_count)


def equal(a, b):
  return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) and a[k].dtype == b[k].dtype
                                     for k in a)


def test_train_batches_are_a_pure_function_of_seed_and_step_and_match_the_in_memory_path(shards):
  first, second = dataset(shards), dataset(shards)
  steps = [0, 1, 2, 3, 9, 4, 5, 20]  # In order (served by the stream), then out of order.
  got = {s: first.train_batch(s) for s in steps}
  arrays = {'inputs': np.stack([features(i)[1:] for i in range(N)]).astype(np.float32),
            'targets': np.arange(N, dtype=np.int32)}
  for s in reversed(steps):
    assert equal(second.train_batch(s), got[s])
    assert equal(got[s], pipeline.shuffled_train_batch(arrays, s, seed=0, batch_size=8))
  # Every record once per epoch (N // 8 full batches fit in the first one).
  epoch = np.concatenate([got[s]['targets'] for s in range(6)])
  assert len(set(epoch.tolist())) == 48
  assert not equal(dataset(shards, seed=1).train_batch(0), got[0])


def test_each_process_reads_its_rows_of_the_same_global_batch(shards):
  one = dataset(shards)
  two = [dataset(shards, process_index=i, process_count=2) for i in range(2)]
  for step in (0, 7):
    rows = [d.train_batch(step) for d in two]
    assert all(len(r['targets']) == 4 for r in rows)
    whole = {k: np.concatenate([r[k] for r in rows]) for k in rows[0]}
    assert equal(whole, one.train_batch(step))
    evals = [list(d.eval_batches()) for d in two]
    for i, batch in enumerate(one.eval_batches()):
      assert equal({k: np.concatenate([e[i][k] for e in evals]) for k in batch}, batch)


def test_eval_covers_every_record_once_padded_and_masked(shards):
  ds = dataset(shards)
  evals = list(ds.eval_batches())
  assert ds.num_eval_examples == N and len(evals) == 6  # 53 records, batches of 10.
  mask = np.concatenate([b['mask'] for b in evals])
  ids = np.concatenate([b['targets'] for b in evals])
  assert mask.sum() == N and sorted(ids[mask == 1].tolist()) == list(range(N))
  assert not np.any(evals[-1]['inputs'][3:]) and np.all(mask[N:] == 0)


def test_worker_processes_make_the_same_batches_as_the_trainer(shards):
  serial, parallel = dataset(shards), dataset(shards, workers=2)
  try:
    # The first call is made here; the rest by the two workers (eval goes the same way).
    for step in range(3, 9):
      assert equal(parallel.train_batch(step), serial.train_batch(step))
  finally:
    parallel.train_batch.close()


@pytest.mark.parametrize('damage', ['truncated', 'corrupt', 'empty', 'missing'])
def test_a_truncated_or_corrupt_record_file_is_one_error_naming_it(tmp_path, damage):
  paths = write_shards(tmp_path, sizes=(5, 6))
  bad = paths[1]
  data = open(bad, 'rb').read()
  if damage == 'truncated':
    data = data[:len(data) // 2]
  elif damage == 'corrupt':
    data = data[:40] + bytes(b ^ 0xFF for b in data[40:400]) + data[400:]
  elif damage == 'empty':
    data = b''
  with open(bad, 'wb') as f:
    f.write(data)
  if damage == 'missing':
    bad = paths[1] = str(tmp_path / 'nope.array_record')
  with pytest.raises(ConfigError, match='Record file ' + bad):
    streaming.RecordFiles(paths)


def test_the_source_is_chosen_by_key_or_size():
  assert streaming.choose_source('memory', 10 << 30)[0] == 'memory'
  assert streaming.choose_source('stream', 10)[0] == 'stream'
  assert streaming.choose_source('auto', 18 << 20) == ('memory', 'auto: 18 MiB on disk <= 1024 MiB')
  assert streaming.choose_source('auto', None)[0] == 'memory'
  assert streaming.choose_source('auto', 2 << 30)[0] == 'stream'
  with pytest.raises(ConfigError, match="config.data.source='disk'"):
    streaming.choose_source('disk', None)


def test_a_tfds_dataset_streams_the_in_memory_batches_with_random_ops(tmp_path):
  """A TFDS dataset no code knows, stored as tfrecord (read into memory) and as ArrayRecord in
  data_dir/array_record (streamed, the ops run by the stream): the same batches for every step."""
  store_toy_tfds(str(tmp_path))
  store_toy_tfds(str(tmp_path / streaming.ARRAY_RECORD_SUBDIR), file_format='array_record')
  c = base_config()
  c.batch_size, c.eval_batch_size, c.data.workers = 8, 5, 0
  c.data.update(name='toy_shapes', data_dir=str(tmp_path), manual_dir='',
                preprocess='value_range(0, 1)|random_crop(6)|flip_lr')
  memory = data.get_dataset(c.copy_and_resolve_references())
  c.data.source = 'stream'
  streamed = data.get_dataset(c)
  assert streamed.meta == memory.meta
  for step in (0, 1, 2, 9, 3):
    assert equal(streamed.train_batch(step), memory.train_batch(step))
  for a, b in zip(streamed.eval_batches(), memory.eval_batches(), strict=True):
    assert equal(a, b)


def test_a_dataset_with_its_own_in_memory_module_refuses_to_stream():
  c = base_config()
  c.data.update(name='mnist1d', source='stream', data_dir='/nonexistent')
  with pytest.raises(ConfigError, match="data.name='mnist1d' has a module of its own"):
    data.get_dataset(c)


OWN_DATA = '''
import numpy as np
from research.data import streaming


def parse(record):  # Defined here, in a file loaded by path: the worker gets it by value.
  values = np.frombuffer(record, np.int16)
  return {{'x': values[1:].astype(np.uint8).reshape(5, 1), 'y': np.int32(values[0] % 3)}}


def get_data(config):
  source = streaming.RecordFiles({paths!r}, decode=parse)
  return {{'train': source, 'test': source}}
'''


def test_own_record_files_stream_through_get_data_with_a_worker(shards, tmp_path):
  experiment = tmp_path / 'my_records.py'
  experiment.write_text(OWN_DATA.format(paths=shards))
  c = base_config()
  c.batch_size, c.eval_batch_size, c.data.workers = 8, 10, 1
  c.data.update(name='my_records', get_data=str(experiment), inputs='x', targets='y',
                num_classes=3, preprocess='value_range(0, 1)')
  memory = data.get_dataset(c.copy_and_resolve_references())
  c.data.source = 'stream'
  streamed = data.get_dataset(c)
  try:
    assert streamed.meta == memory.meta
    for step in range(4):  # Step 0 made here, 1-3 by the worker.
      assert equal(streamed.train_batch(step), memory.train_batch(step))
  finally:
    streamed.train_batch.close()
