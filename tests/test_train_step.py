"""research/train_step.py: accumulating micro-batches equals one big-batch step (jit and pmap),
which rows dropout sees, and no RNG work when dropout is off."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from research import models, parallel
from research.data.spec import Meta
from research.train_step import eval_step, global_rows, init_state, micro_batches, train_step


def test_global_rows_count_the_global_batch_under_jit_pmap_and_accumulation():
  batch = {'inputs': jnp.zeros((16, 3))}
  np.testing.assert_array_equal(jax.jit(global_rows, static_argnums=1)(batch, None),
                                np.arange(16))
  n = jax.local_device_count()
  shares = {'inputs': jnp.zeros((n, 16 // n, 3))}  # As Layout.put_batch splits the rows.
  rows = jax.pmap(functools.partial(global_rows, axis_name='i'), axis_name='i')(shares)
  np.testing.assert_array_equal(np.asarray(rows).reshape(-1), np.arange(16))
  micro = micro_batches({'rows': np.arange(16)}, 4)['rows']
  np.testing.assert_array_equal(np.sort(micro.reshape(-1)), np.arange(16))


def lm(dropout: float, **options) -> nn.Module:
  return models.get_model(ml_collections.ConfigDict(dict(
      name='transformer_lm', num_layers=2, d_model=16, num_heads=2, d_ff=32, max_len=8,
      dropout_rate=dropout, attention_dropout_rate=dropout, **options)),
      Meta('lm', vocab_size=11, block_size=8))


def mlp(dropout: float) -> nn.Module:
  return models.get_model(ml_collections.ConfigDict(dict(
      name='mlp', widths=(8, 8), activation='relu', dropout_rate=dropout)),
      Meta('classification', num_classes=3))


def state_and_step(model: nn.Module, batch: dict, grad_accum_steps: int):
  tx = optax.adam(optax.constant_schedule(1e-3))
  state = nn.unbox(init_state(model, tx, {k: v[:1] for k, v in batch.items()}, 0))
  return state, functools.partial(train_step, apply_fn=model.apply, tx=tx,
                                  schedule=optax.constant_schedule(1e-3),
                                  grad_accum_steps=grad_accum_steps)


def step_jaxpr(model: nn.Module, batch: dict, grad_accum_steps: int) -> str:
  state, step = state_and_step(model, batch, grad_accum_steps)
  return str(jax.make_jaxpr(step)(state, batch))


@pytest.mark.parametrize('make, batch', [
    (lm, {'inputs': np.zeros((4, 8), np.int32), 'targets': np.zeros((4, 8), np.int32)}),
    (mlp, {'inputs': np.zeros((4, 5), np.float32), 'targets': np.zeros((4,), np.int32)}),
])
@pytest.mark.parametrize('grad_accum_steps', [1, 2])
def test_dropout_off_draws_no_random_bits(make, batch, grad_accum_steps):
  # The step speed at dropout 0 must not pay for per-example keys: no bits drawn at all.
  assert 'random_bits' not in step_jaxpr(make(0.0), batch, grad_accum_steps)
  assert 'random_bits' in step_jaxpr(make(0.1), batch, grad_accum_steps)


def test_scanned_rematerialized_layers_keep_each_examples_masks_under_accumulation():
  # The rows must reach the dropout inside nn.scan / nn.remat bodies too.
  model = lm(0.3, scan_layers=True, remat='full')
  tokens = np.random.default_rng(0).integers(0, 11, (4, 9)).astype(np.int32)
  batch = {'inputs': tokens[:, :-1], 'targets': tokens[:, 1:]}
  outs = []
  for k in (1, 4):
    state, step = state_and_step(model, batch, k)
    new_state, metrics = jax.jit(step)(state, batch)
    outs.append((metrics['loss'], metrics['grad_norm'], new_state.params))
  (loss1, norm1, params1), (loss4, norm4, params4) = outs
  np.testing.assert_allclose(loss4, loss1, rtol=1e-6)
  np.testing.assert_allclose(norm4, norm1, rtol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), params4,
               params1)


def accumulation_case():
  """A 1-layer LM, SGD (updates proportional to the gradients, unlike Adam's) and a batch whose
  target masks give the micro-batches unequal weights: a mean of micro-batch means would differ."""
  model = models.get_model(ml_collections.ConfigDict(dict(
      name='transformer_lm', num_layers=1, d_model=32, num_heads=4, max_len=16)),
      Meta(task='lm', vocab_size=48, block_size=16))
  rng = np.random.default_rng(0)
  tokens = rng.integers(0, 48, (32, 17)).astype(np.int32)
  mask = (rng.random((32, 16)) < np.linspace(0.1, 1.0, 32)[:, None]).astype(np.float32)
  batch = {'inputs': tokens[:, :-1], 'targets': tokens[:, 1:], 'target_mask': mask}
  tx = optax.sgd(optax.constant_schedule(0.5))  # A schedule: train_step logs its LR.
  init = functools.partial(init_state, model, tx, {k: v[:1] for k, v in batch.items()}, 0)
  return model, tx, init, batch


@pytest.mark.parametrize('strategy, accum', [('jit', 4), ('pmap', 2)])
def test_accumulating_micro_batches_equals_one_big_batch_step(strategy, accum):
  model, tx, init, batch = accumulation_case()
  boxed = jax.eval_shape(init)
  layout = parallel.make_layout(ml_collections.ConfigDict(dict(
      strategy=strategy, data=-1, fsdp=1, tensor=1)), boxed, 32)
  results = []
  for k in (1, accum):
    p_train, _ = parallel.compile_steps(layout, functools.partial(
        train_step, apply_fn=model.apply, tx=tx, schedule=optax.constant_schedule(0.5),
        grad_accum_steps=k), functools.partial(eval_step, apply_fn=model.apply))
    state = layout.to_strategy(jax.jit(lambda: nn.unbox(init()),
                                       out_shardings=layout.state_sharding)())
    for _ in range(2):
      state, metrics = p_train(state, layout.put_batch(batch))
      jax.block_until_ready(metrics)
    params = [np.asarray(x) for x in jax.tree.leaves(layout.to_global(state).params)]
    results.append((params, {k: np.asarray(v).ravel()[0] for k, v in metrics.items()}))
  (big_params, big_metrics), (acc_params, acc_metrics) = results
  moved = max(np.abs(a - b).max() for a, b in zip(big_params, jax.tree.leaves(
      jax.device_get(nn.unbox(init()).params)), strict=True))
  assert moved > 1e-3  # The steps changed the params, so agreement is not that of a frozen model.
  for a, b in zip(big_params, acc_params, strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  for key in ('loss', 'accuracy', 'grad_norm'):
    np.testing.assert_allclose(big_metrics[key], acc_metrics[key], rtol=1e-5)
