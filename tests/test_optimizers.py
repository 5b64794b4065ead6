"""research/optimizers.py: which parameters are weight-decayed, the schedules, and the learning
rate the train loop logs (it must be the one the optimizer applied)."""

import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

import experiments.mnist_mlp as mnist_mlp
import experiments.shakespeare_char as shakespeare_char
import experiments.sst2_encoder as sst2_encoder
from research import config as configs
from research import models, optimizers
from research.data.spec import Meta
from research.errors import ConfigError
from research.optimizers import path_name

IS_BOX = lambda x: isinstance(x, nn.meta.AxisMetadata)  # noqa: E731


def boxed_params(config, meta, **inputs):
  """The model's params as init makes them (logical-axis boxes), shapes only."""
  model = models.get_model(config.model, meta)
  return jax.eval_shape(lambda: model.init(jax.random.key(0), **inputs)['params'])


def lm_params(scan_layers, use_bias):
  config = shakespeare_char.get_config('cpu')
  config.model.scan_layers, config.model.use_bias = scan_layers, use_bias
  return boxed_params(config, Meta(task='lm', vocab_size=65, block_size=64),
                      inputs=jnp.zeros((1, 64), jnp.int32))


def encoder_params():
  config = sst2_encoder.get_config('tiny')
  meta = Meta(task='classification', vocab_size=50, max_len=64, num_classes=2)
  return boxed_params(config, meta, inputs=jnp.zeros((1, 64), jnp.int32),
                      input_mask=jnp.ones((1, 64), jnp.int32))


def decayed(params):
  """Sorted paths the decay mask marks, checked to agree on the boxed and the unboxed tree."""
  mask = optimizers.make_decay_mask()
  boxed = {path_name(p) for p, m in jax.tree_util.tree_leaves_with_path(mask(params)) if m}
  plain = {path_name(p) for p, m in jax.tree_util.tree_leaves_with_path(mask(nn.unbox(params)))
           if m}
  assert boxed == plain
  return sorted(plain)


BLOCK_KERNELS = ['attn/key_kernel', 'attn/out_kernel', 'attn/query_kernel', 'attn/value_kernel',
                 'mlp/down/kernel', 'mlp/up/kernel']
EMBEDDINGS = ['position_embed', 'token_embed/embedding']


def in_blocks(prefixes, names):
  return [f'{p}/{n}' for p in prefixes for n in names]


UNSCANNED = [f'stack/block_{i}' for i in range(4)]  # shakespeare_char :cpu has 4 layers.


@pytest.mark.parametrize('use_bias', [False, True])
def test_lm_decays_kernels_and_embeddings_only_unscanned(use_bias):
  want = sorted(EMBEDDINGS + in_blocks(UNSCANNED, BLOCK_KERNELS))
  assert decayed(lm_params(False, use_bias)) == want


@pytest.mark.parametrize('use_bias', [False, True])
def test_lm_decays_kernels_and_embeddings_only_scanned(use_bias):
  # Every scanned parameter has a layer axis, so a rank rule would decay the norm scales too.
  want = sorted(EMBEDDINGS + in_blocks(['stack/layers/block'], BLOCK_KERNELS))
  assert decayed(lm_params(True, use_bias)) == want


def test_encoder_decays_kernels_and_embeddings_not_its_2d_attention_biases():
  params = encoder_params()
  names = {path_name(p) for p, _ in jax.tree_util.tree_leaves_with_path(params, is_leaf=IS_BOX)}
  assert 'stack/block_0/attn/query_bias' in names  # (heads, head_dim): rank 2, still a bias.
  assert decayed(params) == sorted(
      ['cls_embed', 'head/kernel', 'position_embed', 'token_embed/embedding'] +
      in_blocks(['stack/block_0'], BLOCK_KERNELS))


def test_mlp_decays_its_kernels_only():
  config = mnist_mlp.get_config('smoke')
  config.model.widths = (8, 8)
  params = boxed_params(config, Meta('classification', num_classes=10),
                        inputs=jnp.zeros((1, 28, 28, 1)))
  assert decayed(params) == ['dense_0/kernel', 'dense_1/kernel', 'head/kernel']


def test_unknown_parameter_names_are_refused_only_when_decaying():
  params = {'dense': {'kernel': jnp.ones((2, 2)), 'w': jnp.ones((2, 2))}}
  with pytest.raises(ConfigError, match=r"no rule for parameter\(s\) \['dense/w'\]"):
    optimizers.make_decay_mask()(params)
  opt = configs.base_config().optimizer
  tx, _ = optimizers.make_optimizer(opt, 10)  # weight_decay 0: nothing to decide.
  tx.update(params, tx.init(params), params)


@pytest.mark.parametrize('name', optimizers.OPTIMIZERS)
@pytest.mark.parametrize('partition', [{}, {'freeze': ('token_embed',),
                                            'encoder_lr_multiplier': 0.5}])
def test_every_optimizer_decays_exactly_the_masked_encoder_params(name, partition):
  """Through each optax wrapper, with transfer.partition_optimizer, from a boxed init (as
  init_state does): with zero gradients only decay moves a parameter."""
  opt = configs.base_config().optimizer
  opt.name, opt.weight_decay, opt.grad_clip_norm = name, 0.5, 1.0
  for key, value in partition.items():
    opt[key] = value
  tx, _ = optimizers.make_optimizer(opt, 10)
  boxed = jax.tree.map(jnp.ones_like, encoder_params())  # Ones: a decayed zero bias would not move.
  params = nn.unbox(boxed)
  state = nn.unbox(tx.init(boxed))
  updates, _ = tx.update(jax.tree.map(jnp.zeros_like, params), state, params)
  moved = sorted(path_name(p) for p, u in jax.tree_util.tree_leaves_with_path(updates)
                 if float(jnp.abs(u).max()) > 0)
  want = decayed(encoder_params())
  if partition:
    want = [n for n in want if not n.startswith('token_embed')]
  assert moved == want


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


# --- Schedules ----------------------------------------------------------------------------------


def schedule_opt(**overrides):
  opt = configs.base_config().optimizer
  opt.learning_rate, opt.warmup_steps, opt.final_lr_ratio = 1.0, 4, 0.1
  for key, value in overrides.items():
    opt[key] = value
  return opt


@pytest.mark.parametrize('schedule', optimizers.SCHEDULES)
def test_warmup_first_update_already_moves_and_reaches_the_peak_at_update_warmup(schedule):
  lr = optimizers.make_schedule(schedule_opt(schedule=schedule), num_train_steps=20)
  np.testing.assert_allclose([float(lr(s)) for s in range(5)], [0.25, 0.5, 0.75, 1.0, 1.0],
                             atol=1e-6)


@pytest.mark.parametrize('schedule', ['cosine', 'linear'])
def test_decay_steps_sets_the_schedule_end_and_the_lr_stays_final_after_it(schedule):
  opt = schedule_opt(schedule=schedule, decay_steps=10)
  lr = optimizers.make_schedule(opt, num_train_steps=100)
  assert float(lr(9)) > 0.1
  np.testing.assert_allclose([float(lr(s)) for s in (10, 11, 50, 99)], 0.1, atol=1e-6)
  # 0 / None: num_train_steps, as before the key existed.
  for unset in (0, None):
    lr = optimizers.make_schedule(schedule_opt(schedule=schedule, decay_steps=unset), 10)
    np.testing.assert_allclose(float(lr(10)), 0.1, atol=1e-6)
    assert float(lr(9)) > 0.1


@pytest.mark.parametrize('bad', [-1, 2.5, '10', True])
def test_bad_decay_steps_is_a_config_error(bad):
  opt = ml_collections.ConfigDict(dict(schedule_opt().to_dict(), decay_steps=bad))
  with pytest.raises(ConfigError, match='optimizer.decay_steps must be an integer >= 0'):
    optimizers.make_optimizer(opt, 10)


def test_applied_learning_rate_follows_the_optimizer_count_not_a_step_counter():
  opt = schedule_opt(encoder_lr_multiplier=0.5)  # A multi_transform: one count per group.
  tx, schedule = optimizers.make_optimizer(opt, 20)
  params = {'head': {'kernel': jnp.ones((2, 2))}, 'body': {'kernel': jnp.ones((2, 2))}}
  state = tx.init(params)
  for count in range(3):
    assert float(optimizers.applied_learning_rate(schedule, state)) == float(schedule(count))
    _, state = tx.update(params, state, params)


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


# --- The logged learning rate in a real run -----------------------------------------------------


def read_jsonl(path):
  with open(path) as f:
    return [json.loads(line) for line in f]


def test_logged_lr_is_the_applied_one_when_an_update_is_skipped(tmp_path, data_dir, monkeypatch):
  """nan_policy='skip': update 3 is dropped, so the optimizer's count (and the schedule) stays
  one behind the step from then on; the log must show the LR each update really used."""
  from research.train import train_and_evaluate

  config = mnist_mlp.get_config('smoke')
  config.data.data_dir = data_dir
  config.model.widths = (16,)
  config.batch_size, config.num_train_steps = 16, 8
  config.log_every_steps, config.eval_every_steps, config.checkpoint_every_steps = 1, 8, 8
  config.progress_bar, config.checkpoint.async_save = False, False
  config.optimizer.warmup_steps = 4
  config.nan_policy = 'skip'
  monkeypatch.setenv('RESEARCH_FAULT_INJECTION', 'nan@3')
  train_and_evaluate(config, str(tmp_path))
  train = [m for m in read_jsonl(tmp_path / 'metrics.jsonl') if m['split'] == 'train']
  assert [m['nonfinite'] for m in train] == [0, 0, 1, 0, 0, 0, 0, 0]
  _, schedule = optimizers.make_optimizer(config.optimizer, config.num_train_steps)
  counts = [0, 1, 2, 2, 3, 4, 5, 6]  # Updates applied before each step; step 3's was skipped.
  np.testing.assert_allclose([m['learning_rate'] for m in train],
                             [float(schedule(c)) for c in counts], rtol=1e-6)
  assert os.path.exists(tmp_path / 'checkpoints' / '8')
