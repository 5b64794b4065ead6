"""Multi-head self-attention: grouped-query heads, rotary positions, any mask, a KV cache.

The mask is an argument, so the same module serves a causal decoder (`is_causal=True`, or an
explicit mask over the cache when decoding) and a bidirectional encoder (a padding mask, or none).
Attention itself goes through `jax.nn.dot_product_attention`, so `implementation='cudnn'` gets
the fused GPU kernel; only dropout on the attention probabilities, which that function lacks,
takes the explicit softmax path.
"""

from __future__ import annotations

from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from research.models.dropout import Dropout

IMPLEMENTATIONS = ('xla', 'cudnn')


def rotary_embed(x_BxLxHxD: jax.Array, positions_L: jax.Array, base: float = 10000.0) -> jax.Array:
  """RoPE (GPT-NeoX half-split form): rotates channel pairs (i, i + D/2) by position * freq_i.
  `positions_L`: L positions shared by the batch, or BxL (packed documents)."""
  half = x_BxLxHxD.shape[-1] // 2
  freqs = base ** (-jnp.arange(half, dtype=jnp.float32) / half)
  positions_BxL = positions_L if positions_L.ndim == 2 else positions_L[None]
  angles_BxLxF = positions_BxL.astype(jnp.float32)[..., None] * freqs
  sin, cos = jnp.sin(angles_BxLxF)[:, :, None, :], jnp.cos(angles_BxLxF)[:, :, None, :]
  x1, x2 = jnp.split(x_BxLxHxD.astype(jnp.float32), 2, axis=-1)
  out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
  return out.astype(x_BxLxHxD.dtype)


def causal_mask(length: int) -> jax.Array:
  return jnp.tril(jnp.ones((length, length), bool))[None, None]


def explicit_attention(q_BxLxHxD: jax.Array, k_BxSxKxD: jax.Array, v_BxSxKxD: jax.Array,
                       mask: jax.Array | None,
                       dropout: Callable[[jax.Array], jax.Array]) -> jax.Array:
  """Softmax attention written out, for dropout on the probabilities (the fused path has none)."""
  groups = q_BxLxHxD.shape[2] // k_BxSxKxD.shape[2]
  k = jnp.repeat(k_BxSxKxD, groups, axis=2)
  v = jnp.repeat(v_BxSxKxD, groups, axis=2)
  scale = q_BxLxHxD.shape[-1] ** -0.5
  logits_BxHxLxS = jnp.einsum('blhd,bshd->bhls', q_BxLxHxD, k).astype(jnp.float32) * scale
  if mask is not None:
    logits_BxHxLxS = jnp.where(mask, logits_BxHxLxS, jnp.finfo(jnp.float32).min)
  probs = dropout(jax.nn.softmax(logits_BxHxLxS, axis=-1)).astype(v.dtype)
  return jnp.einsum('bhls,bshd->blhd', probs, v)


class Attention(nn.Module):
  """Self-attention over x_BxLxE.

  mask: bool, broadcastable to BxHxLxS (True = attend), or None. `is_causal` adds the causal mask
  (and lets cuDNN skip the masked half). In `decode` mode, k/v are written into a cache of
  `max_len` positions at `decode_index`, and the caller's mask covers the whole cache.
  """

  num_heads: int
  num_kv_heads: int
  head_dim: int
  rotary: bool = False
  rotary_base: float = 10000.0
  dropout_rate: float = 0.0  # On attention probabilities.
  use_bias: bool = False
  init_std: float = 0.02
  out_init_std: float = 0.02  # GPT-2: residual projections get init_std / sqrt(2 * num_layers).
  implementation: str = 'xla'
  decode: bool = False
  max_len: int = 0  # KV cache length (decode only).
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32

  def _param(self, name: str, shape: tuple[int, ...], axes: tuple[str, ...], init) -> jax.Array:
    # Kernels are made at their full rank (not flattened as nn.DenseGeneral does), so the
    # logical-axis sharding constraint applied at init matches their shape.
    param = self.param(name, nn.with_logical_partitioning(init, axes), shape, self.param_dtype)
    return param.astype(self.dtype)

  def _proj(self, x_BxLxE: jax.Array, heads: int, heads_axis: str, name: str) -> jax.Array:
    kernel = self._param(f'{name}_kernel', (x_BxLxE.shape[-1], heads, self.head_dim),
                         ('embed', heads_axis, 'head_dim'), nn.initializers.normal(self.init_std))
    out_BxLxHxD = jnp.einsum('ble,ehd->blhd', x_BxLxE.astype(self.dtype), kernel)
    if self.use_bias:
      out_BxLxHxD += self._param(f'{name}_bias', (heads, self.head_dim), (heads_axis, 'head_dim'),
                                 nn.initializers.zeros_init())
    return out_BxLxHxD

  def _cached(self, k_BxLxKxD: jax.Array, v_BxLxKxD: jax.Array,
              index: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Writes this chunk's keys/values at `index`; returns the whole cache (BxMxKxD)."""
    shape = (k_BxLxKxD.shape[0], self.max_len) + k_BxLxKxD.shape[2:]
    cached_k = self.variable('cache', 'k', jnp.zeros, shape, k_BxLxKxD.dtype)
    cached_v = self.variable('cache', 'v', jnp.zeros, shape, v_BxLxKxD.dtype)
    start = (0, index, 0, 0)
    cached_k.value = jax.lax.dynamic_update_slice(cached_k.value, k_BxLxKxD, start)
    cached_v.value = jax.lax.dynamic_update_slice(cached_v.value, v_BxLxKxD, start)
    return cached_k.value, cached_v.value

  @nn.compact
  def __call__(self, x_BxLxE: jax.Array, *, mask: jax.Array | None = None,
               is_causal: bool = False, positions_L: jax.Array | None = None,
               decode_index: jax.Array | None = None, train: bool = False,
               rows: jax.Array | None = None) -> jax.Array:
    q = self._proj(x_BxLxE, self.num_heads, 'heads', 'query')
    k = self._proj(x_BxLxE, self.num_kv_heads, 'kv_heads', 'key')
    v = self._proj(x_BxLxE, self.num_kv_heads, 'kv_heads', 'value')
    if self.rotary:
      if positions_L is None:
        positions_L = jnp.arange(x_BxLxE.shape[1])
      q = rotary_embed(q, positions_L, self.rotary_base)
      k = rotary_embed(k, positions_L, self.rotary_base)
    if self.decode:
      k, v = self._cached(k, v, decode_index)
    if train and self.dropout_rate > 0:
      if is_causal:
        mask = causal_mask(q.shape[1]) if mask is None else mask & causal_mask(q.shape[1])
      dropout = Dropout(self.dropout_rate)
      out = explicit_attention(q, k, v, mask, lambda p: dropout(p, rows, deterministic=False))
    else:
      out = jax.nn.dot_product_attention(q, k, v, mask=mask, is_causal=is_causal,
                                         implementation=self.implementation)
    embed = x_BxLxE.shape[-1]
    kernel = self._param('out_kernel', (self.num_heads, self.head_dim, embed),
                         ('heads', 'head_dim', 'embed'), nn.initializers.normal(self.out_init_std))
    y_BxLxE = jnp.einsum('blhd,hde->ble', out, kernel)
    if self.use_bias:
      y_BxLxE += self._param('out_bias', (embed,), ('embed',), nn.initializers.zeros_init())
    return y_BxLxE
