"""Unit tests of the foundation pieces: data, model, optimizers, config.

Metrics: tests/test_metrics.py."""

import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from conftest import REPO

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


def _config_reads(path):
  """(attribute reads, .get calls) on every `cfg: ml_collections.ConfigDict` argument in path."""
  import ast

  reads, gets = set(), []
  for fn in ast.walk(ast.parse(open(path).read())):
    if not isinstance(fn, ast.FunctionDef):
      continue
    if not any(a.arg == 'cfg' and 'ConfigDict' in ast.unparse(a.annotation or ast.Constant(''))
               for a in fn.args.args):
      continue
    for node in ast.walk(fn):
      if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
          and node.value.id == 'cfg'):
        if node.attr == 'get':
          gets.append(f'{path}:{node.lineno}')
        else:
          reads.add(node.attr)
  return reads, gets


def test_models_read_only_config_keys_that_have_their_one_default_in_base_config():
  import glob

  keys = set(configs.base_config().model.keys())
  for path in glob.glob(os.path.join(REPO, 'research', 'models', '*.py')):
    reads, gets = _config_reads(path)
    assert not gets, f'a default outside research/config.py: {gets}'
    assert reads <= keys | {'keys', 'to_dict'}, (path, reads - keys)


def test_a_mistyped_model_key_is_refused_with_the_closest_key():
  cfg = configs.base_config().model
  cfg.num_head = 2  # An experiment file's typo; the model would silently keep num_heads = 4.
  with pytest.raises(ConfigError, match='no key "num_head". Did you mean "num_heads"'):
    get_model(cfg, Meta('classification', num_classes=10))


def test_a_bad_dtype_is_a_config_error_for_every_model():
  cfg = configs.base_config().model
  cfg.dtype = 'float23'
  with pytest.raises(ConfigError, match="config.model.dtype='float23' is not a dtype"):
    get_model(cfg, Meta('classification', num_classes=10))


@pytest.mark.parametrize('spec', ['mnist_mlp.py', 'mnist_mlp.py:smoke', 'mnist_vit.py:tiny',
                                  'mnist1d_encoder.py', 'shakespeare_char.py:gpu',
                                  'sst2_encoder.py:finetune', 'sst2_pretrain_mlm.py',
                                  'gpt2_small.py'])
def test_experiment_presets_load_and_take_model_overrides_of_their_type(spec):
  from absl import flags
  from ml_collections import config_flags

  from research import models
  from research.config_checks import check_model

  argv = ['launch.py', f'--config={os.path.join(REPO, "experiments", spec)}',
          '--config.model.rotary_base=500000', '--config.model.dropout_rate=0',
          '--config.model.max_len=256']
  fv = flags.FlagValues()  # As launch.py's flag, reading these arguments instead of sys.argv.
  config_flags.DEFINE_config_file('config', None, '', flag_values=fv, lock_config=True,
                                  sys_argv=argv)
  fv(argv)
  model = fv.config.model
  assert (model.rotary_base, model.dropout_rate, model.max_len) == (500000.0, 0.0, 256)
  assert type(model.rotary_base) is float and type(model.dropout_rate) is float
  model.attention_impl = 'xla'  # gpt2_small's cudnn needs a GPU.
  check_model(model, models.CHOICES)
