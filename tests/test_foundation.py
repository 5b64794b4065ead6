"""Unit tests of the foundation pieces: data, model, optimizers, config.

Metrics: tests/test_metrics.py."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from research import config as configs
from research import optimizers
from research.config_checks import check_train_config
from research.data import pipeline
from research.data.spec import Meta
from research.errors import ConfigError
from research.models import get_model


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


def test_mnist_shapes_and_eval_padding(data_dir):
  from research.data import get_dataset

  config = _mnist_config(data_dir)
  config.eval_batch_size = 768  # 10000 = 13 * 768 + 16: the last batch is mostly padding.
  ds = get_dataset(config)
  batch = ds.train_batch(0)
  assert batch['inputs'].shape == (128, 28, 28, 1) and batch['inputs'].dtype == np.float32
  assert 0.0 <= batch['inputs'].min() and batch['inputs'].max() <= 1.0
  assert batch['targets'].shape == (128,) and batch['targets'].dtype == np.int32
  evals = list(ds.eval_batches())
  assert len(evals) == 14 and sum(b['mask'].sum() for b in evals) == ds.num_eval_examples == 10000


def _mnist_config(data_dir):
  import experiments.mnist_mlp as mnist_mlp

  config = mnist_mlp.get_config('smoke')
  config.data.data_dir = data_dir
  return config


def test_mlp_output_shape_and_dtype():
  cfg = ml_collections.ConfigDict({'name': 'mlp', 'widths': (32, 16), 'activation': 'gelu',
                                   'dropout_rate': 0.1, 'dtype': 'bfloat16',
                                   'param_dtype': 'float32'})
  model = get_model(cfg, Meta('classification', num_classes=10))
  x = jnp.ones((4, 28, 28, 1))
  params = model.init(jax.random.key(0), inputs=x)['params']
  logits = model.apply({'params': params}, inputs=x, train=True,
                       rngs={'dropout': jax.random.key(1)})
  assert logits.shape == (4, 10) and logits.dtype == jnp.float32
  kernel = jax.tree.leaves(params)[1]
  assert kernel.dtype == jnp.float32  # Params stay f32 under bf16 compute.


@pytest.mark.parametrize('schedule,expected', [
    ('constant', [0.5, 1.0, 1.0, 1.0, 1.0]),  # The first update already moves (warmup 2).
    ('warmup_cosine', [0.5, 1.0, 1.0, 0.55, 0.1]),
    ('linear', [0.5, 1.0, 1.0, 0.55, 0.1]),
])
def test_schedules_warm_up_then_decay_to_the_final_ratio(schedule, expected):
  opt = configs.base_config().optimizer
  opt.learning_rate, opt.warmup_steps, opt.final_lr_ratio, opt.schedule = 1.0, 2, 0.1, schedule
  lr = optimizers.make_schedule(opt, num_train_steps=6)
  np.testing.assert_allclose([float(lr(s)) for s in (0, 1, 2, 4, 6)], expected, atol=1e-6)


@pytest.mark.parametrize('name', optimizers.OPTIMIZERS)
def test_every_optimizer_steps_and_decays_only_matrices(name):
  opt = configs.base_config().optimizer
  opt.name, opt.weight_decay, opt.grad_clip_norm = name, 0.5, 1.0
  tx, _ = optimizers.make_optimizer(opt, 10)
  params = {'kernel': jnp.ones((4, 4)), 'bias': jnp.ones((4,))}
  zero_grads = jax.tree.map(jnp.zeros_like, params)
  updates, _ = tx.update(zero_grads, tx.init(params), params)
  assert float(jnp.abs(updates['bias']).max()) == 0.0  # No decay on vectors.
  assert float(jnp.abs(updates['kernel']).max()) > 0.0  # Decay on matrices.


def test_check_train_config_rejects_bad_values():
  config = configs.base_config()
  config.batch_size = 0
  with pytest.raises(ConfigError, match='batch_size must be a positive integer'):
    check_train_config(config)
  config = configs.base_config()
  config.optimizer.name = 'adamm'
  with pytest.raises(ConfigError, match='Did you mean "adamw"'):
    optimizers.make_optimizer(config.optimizer, 10)
