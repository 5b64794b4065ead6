"""research/data/pipeline.py: batches are a pure function of (seed, step), epochs, process shards,
padded evaluation, the prefetcher. The datasets' own batches: tests/test_data.py."""

import numpy as np
import pytest

from research.data import pipeline


def _arrays(n=10):
  return {'inputs': np.arange(n * 3, dtype=np.float32).reshape(n, 3),
          'targets': np.arange(n, dtype=np.int32)}


def test_train_batches_are_a_pure_function_of_seed_and_step():
  a = pipeline.shuffled_train_batch(_arrays(), 7, seed=3, batch_size=4)
  b = pipeline.shuffled_train_batch(_arrays(), 7, seed=3, batch_size=4)
  c = pipeline.shuffled_train_batch(_arrays(), 7, seed=4, batch_size=4)
  np.testing.assert_array_equal(a['targets'], b['targets'])
  assert not np.array_equal(a['targets'], c['targets'])


def test_each_epoch_visits_every_example_once():
  batches = [pipeline.shuffled_train_batch(_arrays(), s, seed=0, batch_size=5) for s in range(4)]
  seen = np.concatenate([b['targets'] for b in batches])  # 20 positions = 2 epochs of 10.
  assert sorted(seen[:10]) == list(range(10)) and sorted(seen[10:]) == list(range(10))
  assert not np.array_equal(seen[:10], seen[10:])  # A new permutation each epoch.


def test_process_shards_partition_the_global_batch():
  full = pipeline.shuffled_train_batch(_arrays(), 3, seed=1, batch_size=4)['targets']
  parts = [pipeline.shuffled_train_batch(_arrays(), 3, seed=1, batch_size=4, process_index=i,
                                         process_count=2)['targets'] for i in range(2)]
  np.testing.assert_array_equal(np.concatenate(parts), full)


def test_padded_eval_covers_every_example_exactly_once():
  batches = list(pipeline.padded_eval_batches(_arrays(10), batch_size=4))
  assert [b['inputs'].shape for b in batches] == [(4, 3)] * 3
  mask = np.concatenate([b['mask'] for b in batches])
  targets = np.concatenate([b['targets'] for b in batches])
  np.testing.assert_array_equal(mask, [1] * 10 + [0] * 2)
  np.testing.assert_array_equal(targets[mask == 1], np.arange(10))


def test_prefetcher_yields_steps_in_order_and_surfaces_errors():
  def make(step):
    if step == 3:
      raise ValueError('boom')
    return step * 10

  prefetch = pipeline.Prefetcher(make, start_step=1)
  assert prefetch.next() == (1, 10) and prefetch.next() == (2, 20)
  with pytest.raises(ValueError, match='boom'):
    prefetch.next()
  prefetch.close()
