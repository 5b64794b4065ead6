"""Dropout whose mask for an example depends on the example's row in the global batch, not on
which device, program or micro-batch computes it.

`flax.linen.Dropout` draws one mask for the array it is given. Under `jax.jit` that array is the
global batch, and with `jax_threefry_partitionable` (the pinned JAX's default) the bits do not
depend on the sharding; but a `jax.pmap` device or a gradient-accumulation micro-batch sees only
some rows, and a draw of that smaller shape gives different bits. Here each row r draws from
`fold_in(key, r)` instead, so a row's mask is the same whichever subset of the batch (and in
whichever order) a program holds, given each row's global index `rows` (train_step.global_rows).
The work is the same as one draw over the whole array, plus one hash per row.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp


def row_masks(key: jax.Array, rows: jax.Array, keep: float,
              row_shape: tuple[int, ...]) -> jax.Array:
  """Bernoulli(keep) masks of shape (len(rows),) + row_shape; row i's from fold_in(key, rows[i])."""
  row_keys = jax.vmap(jax.random.fold_in, in_axes=(None, 0))(key, rows)
  return jax.vmap(lambda k: jax.random.bernoulli(k, keep, row_shape))(row_keys)


class Dropout(nn.Module):
  """Inverted dropout on x (batch first); `rows`: each row's global index (None: 0, 1, ...)."""

  rate: float

  @nn.compact
  def __call__(self, x: jax.Array, rows: jax.Array | None = None, *,
               deterministic: bool) -> jax.Array:
    if deterministic or self.rate == 0.0:  # No RNG work at all.
      return x
    if self.rate == 1.0:
      return jnp.zeros_like(x)
    keep = 1.0 - self.rate
    rows = jnp.arange(x.shape[0]) if rows is None else rows
    mask = row_masks(self.make_rng('dropout'), rows, keep, x.shape[1:])
    return jax.lax.select(mask, x / keep, jnp.zeros_like(x))
