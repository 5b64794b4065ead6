"""The train state and the one train step body shared by the jit/Mesh and pmap paths.

Under `jax.jit` the step sees the global batch and `axis_name` is None: XLA's SPMD partitioner
inserts the collectives. Under `jax.pmap` it sees one device's share and sums gradients and loss
sums with `lax.psum` over `axis_name` (each device's loss is divided by the global target count,
so this is the global mean, i.e. a pmean when every device holds equally many targets).
Everything else is the same code.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from research.errors import ConfigError
from research.optimizers import applied_learning_rate

PyTree = Any
# Batch keys passed to the model (when present); the rest feed the loss. `mlm_positions`: where a
# masked-LM predicts (research/models/encoder.py), so it needs no logits at the other positions.
# `rows`: each example's row in the global batch, added by train_step (keys dropout masks).
# `segment_ids`, `positions`: packed documents (research/data/lm_corpus.py).
MODEL_INPUTS = ('inputs', 'input_mask', 'mlm_positions', 'token_types', 'rows', 'segment_ids',
                'positions')


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: PyTree
  opt_state: PyTree
  rng: jax.Array


def init_state(model: nn.Module, tx: optax.GradientTransformation, example_batch: dict,
               seed: int) -> TrainState:
  """Fresh state; params keep their logical-axis boxes (used for shardings, then unboxed)."""
  params_rng, dropout_rng, state_rng = jax.random.split(jax.random.key(seed), 3)
  variables = model.init({'params': params_rng, 'dropout': dropout_rng},
                         **model_inputs(example_batch), train=False)
  params = variables['params']
  return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                    opt_state=tx.init(params), rng=jax.random.key_data(state_rng))


def model_inputs(batch: dict) -> dict:
  return {k: batch[k] for k in MODEL_INPUTS if k in batch}


def target_weights(batch: dict) -> jax.Array:
  """Per-target 0/1 weights: the example mask (padded eval) times any per-token target mask."""
  targets = batch['targets']
  weights = batch.get('target_mask', jnp.ones(targets.shape, jnp.float32))
  if 'mask' in batch:
    weights = weights * batch['mask'].reshape(batch['mask'].shape + (1,) * (targets.ndim - 1))
  return weights.astype(jnp.float32)


def loss_sums(logits: jax.Array, batch: dict) -> dict[str, jax.Array]:
  """Summed cross-entropy and correct predictions, and their weight, for exact averages."""
  weights = target_weights(batch)
  logp = jax.nn.log_softmax(logits.astype(jnp.float32))
  nll = -jnp.take_along_axis(logp, batch['targets'][..., None], axis=-1)[..., 0]
  correct = (jnp.argmax(logits, -1) == batch['targets']).astype(jnp.float32)
  sums = {'loss_sum': jnp.sum(nll * weights), 'correct_sum': jnp.sum(correct * weights),
          'weight_sum': jnp.sum(weights)}
  if 'target_bytes' in batch:  # LM eval: each target's UTF-8 bytes, for bits per byte.
    sums['bytes_sum'] = jnp.sum(batch['target_bytes'] * weights)
  return sums


def for_compute(params: PyTree, compute_sharding: PyTree | None) -> PyTree:
  """jit + FSDP: the params as the model uses them, all-gathered over `fsdp` (ZeRO-3); their
  gradients flow back to the sharded copy. Without it XLA may all-gather the activations instead."""
  if compute_sharding is None:
    return params
  return jax.lax.with_sharding_constraint(params, compute_sharding)


def train_step(state: TrainState, batch: dict, *, apply_fn: Callable,
               tx: optax.GradientTransformation, schedule: optax.Schedule, nan_policy: str = 'stop',
               grad_accum_steps: int = 1, axis_name: str | None = None,
               compute_sharding: PyTree | None = None) -> tuple[TrainState, dict[str, jax.Array]]:
  """One optimizer update. Returns the new state and this step's scalar metrics (on device).

  With `grad_accum_steps` k > 1 the batch is cut into k micro-batches whose gradients are summed
  in a `lax.scan` (one micro-batch of activations alive at a time): the same update as one step
  on the whole batch, up to float summation order (each example keeps its dropout masks).
  """
  rng = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
  # One key for every device and micro-batch: each example's masks come from it and the example's
  # global row (research/models/dropout.py), so they depend on neither the strategy, nor the
  # device count, nor grad_accum_steps. Unused (and compiled away) when dropout is off.
  batch = dict(batch, rows=global_rows(batch, axis_name))

  def loss_fn(params, micro_batch, rng, weight):
    logits = apply_fn({'params': for_compute(params, compute_sharding)},
                      **model_inputs(micro_batch), train=True, rngs={'dropout': rng})
    sums = loss_sums(logits, micro_batch)
    return sums['loss_sum'] / weight, sums

  # Each (micro-)batch's loss is divided by the whole batch's target weight, so summed gradients
  # are exactly the big batch's. pmap: by the global weight, so summed grads are exactly the jit
  # path's (devices may hold unequal masks).
  weight = jnp.sum(target_weights(batch))
  if axis_name is not None:
    weight = jax.lax.psum(weight, axis_name)
  grad_fn = jax.value_and_grad(functools.partial(loss_fn, weight=weight), has_aux=True)
  if grad_accum_steps == 1:
    (_, sums), grads = grad_fn(state.params, batch, rng)
  else:
    grads, sums = accumulate_gradients(grad_fn, state.params, batch, rng, grad_accum_steps)
  if axis_name is not None:
    grads, sums = jax.lax.psum((grads, sums), axis_name)
  metrics = {'loss': sums['loss_sum'] / sums['weight_sum'],
             'accuracy': sums['correct_sum'] / sums['weight_sum']}
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  grad_norm = optax.global_norm(grads)
  finite = jnp.isfinite(metrics['loss']) & jnp.isfinite(grad_norm)
  if nan_policy == 'skip':  # Keep the old params and optimizer state; count the skip.
    keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)
    params, opt_state = keep(params, state.params), keep(opt_state, state.opt_state)
  # The LR this update used (or would have, if skipped): optax's count, not state.step.
  metrics.update(grad_norm=grad_norm, param_norm=optax.global_norm(params),
                 learning_rate=applied_learning_rate(schedule, state.opt_state),
                 nonfinite=1.0 - finite.astype(jnp.float32))
  new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state)
  return new_state, metrics


def global_rows(batch: dict, axis_name: str | None) -> jax.Array:
  """Each row's index in the global batch. jit: the step sees the whole batch. pmap: device a
  of the axis holds rows a*n .. a*n + n - 1, as pmap orders devices by process, then local device
  (jax's pmap), put_batch gives local device d the d-th block of its process's rows, and each
  process holds a contiguous block of the global batch (data.pipeline.process_rows)."""
  n = next(iter(batch.values())).shape[0]
  rows = jnp.arange(n, dtype=jnp.int32)
  if axis_name is not None:
    rows = rows + jax.lax.axis_index(axis_name).astype(jnp.int32) * n
  return rows


def micro_batches(batch: dict, steps: int) -> dict:
  """(steps, B/steps, ...): micro-batch i holds rows i, i + steps, i + 2 * steps, ... so each
  device's contiguous share of the rows splits evenly over the micro-batches (no rows move)."""
  rows = next(iter(batch.values())).shape[0]
  if rows % steps:
    raise ConfigError(f'grad_accum_steps={steps} does not divide the {rows} rows of the batch '
                      'each device program sees (the global batch under jit, one device\'s share '
                      'under pmap); use a batch size divisible by it (times the device count).')
  return jax.tree.map(
      lambda x: x.reshape((rows // steps, steps) + x.shape[1:]).swapaxes(0, 1), batch)


def accumulate_gradients(grad_fn: Callable, params: PyTree, batch: dict, rng: jax.Array,
                         steps: int) -> tuple[PyTree, dict[str, jax.Array]]:
  """Sums (grads, loss sums) of `grad_fn(params, micro_batch, rng)` over `steps` micro-batches."""
  micro = micro_batches(batch, steps)
  first = jax.tree.map(lambda x: x[0], micro)
  (_, sums_shape), grads_shape = jax.eval_shape(grad_fn, params, first, rng)
  zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), (grads_shape, sums_shape))

  def body(acc, micro_batch):
    (_, sums), grads = grad_fn(params, micro_batch, rng)  # Masks differ by micro_batch['rows'].
    return jax.tree.map(jnp.add, acc, (grads, sums)), None

  (grads, sums), _ = jax.lax.scan(body, zeros, micro)
  return grads, sums


def eval_step(params: PyTree, batch: dict, *, apply_fn: Callable, num_classes: int | None = None,
              axis_name: str | None = None,
              compute_sharding: PyTree | None = None) -> dict[str, jax.Array]:
  """Sums over one padded eval batch (and a confusion matrix for classifiers)."""
  logits = apply_fn({'params': for_compute(params, compute_sharding)}, **model_inputs(batch),
                    train=False)
  sums = loss_sums(logits, batch)
  if num_classes is not None:
    preds = jnp.argmax(logits, -1).reshape(-1)
    sums['confusion'] = jnp.zeros((num_classes, num_classes), jnp.float32).at[
        batch['targets'].reshape(-1), preds].add(target_weights(batch).reshape(-1))
  if axis_name is not None:
    sums = jax.lax.psum(sums, axis_name)
  return sums
