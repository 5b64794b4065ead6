"""The shared train step: which rows dropout sees, and no RNG work when dropout is off."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from research import models
from research.data.spec import Meta
from research.train_step import global_rows, init_state, micro_batches, train_step


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
