"""Decoder-only Transformer language model (GPT-2 / nanoGPT layout), with a KV-cache decode mode.

Training: `model.apply({'params': p}, inputs=tokens_BxL, train=True)` -> f32 logits_BxLxV.
Packed documents: also `segment_ids` (BxL, tokens attend only within their segment) and
`positions` (BxL, each document's own positions), as research/data/lm_corpus.py makes them.
Decoding: `model.clone(decode=True)` (see `decoder`) keeps a `cache` collection: each call appends
its L tokens at the cache index, attends over everything cached so far, and advances the index.
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from research.data.spec import Meta
from research.errors import ConfigError
from research.models import blocks
from research.models.dropout import Dropout


class TransformerLM(nn.Module):
  cfg: blocks.TransformerConfig
  vocab_size: int
  tie_embeddings: bool  # config.model.tie_embeddings.

  @nn.compact
  def __call__(self, inputs: jax.Array, *, train: bool = False,
               rows: jax.Array | None = None, segment_ids: jax.Array | None = None,
               positions: jax.Array | None = None) -> jax.Array:
    """`rows`: each example's row in the global batch (keys its dropout masks).
    `segment_ids`, `positions` (BxL, packed documents): attention stays inside a segment, and
    positions restart per document (None: one sequence, positions 0..L-1)."""
    cfg = self.cfg
    length = inputs.shape[1]
    if cfg.decode and (segment_ids is not None or positions is not None):
      raise ValueError('Decoding takes one sequence: no segment_ids or positions.')
    if cfg.decode:
      # One index for every layer's cache: where this chunk goes, and its absolute positions.
      index = self.variable('cache', 'index', lambda: jnp.zeros((), jnp.int32))
      start = index.value
      index.value = start + length
      positions_L = start + jnp.arange(length)
      # A query sees cache slots up to its own position; later (unwritten) slots are masked.
      mask = (jnp.arange(cfg.max_len)[None, :] <= positions_L[:, None])[None, None]
      is_causal = False
    else:
      start, positions_L, mask, is_causal = None, jnp.arange(length), None, True
      if positions is not None:
        positions_L = positions  # BxL: per example.
      if segment_ids is not None:  # And causal: XLA and cuDNN combine the two.
        mask = (segment_ids[:, :, None] == segment_ids[:, None, :])[:, None]

    embed = nn.Embed(
        self.vocab_size, cfg.d_model, dtype=cfg.dtype, param_dtype=cfg.param_dtype,
        name='token_embed',
        embedding_init=nn.with_logical_partitioning(nn.initializers.normal(cfg.init_std),
                                                    ('vocab', 'embed')))
    x_BxLxE = embed(inputs)
    if cfg.positions == 'learned':
      table = self.param('position_embed',
                         nn.with_logical_partitioning(nn.initializers.normal(cfg.init_std),
                                                      ('length', 'embed')),
                         (cfg.max_len, cfg.d_model), cfg.param_dtype)
      embedded = jnp.take(table, positions_L, axis=0).astype(cfg.dtype)
      x_BxLxE = x_BxLxE + (embedded if embedded.ndim == 3 else embedded[None])
    x_BxLxE = blocks.embed_norm(cfg, x_BxLxE)
    x_BxLxE = Dropout(cfg.dropout_rate)(x_BxLxE, rows, deterministic=not train)
    x_BxLxE = blocks.TransformerStack(cfg, name='stack')(
        x_BxLxE, mask=mask, is_causal=is_causal, positions_L=positions_L, decode_index=start,
        train=train, rows=rows)
    x_BxLxE = blocks.final_norm(cfg, x_BxLxE)
    if self.tie_embeddings:
      logits_BxLxV = embed.attend(x_BxLxE)
    else:
      logits_BxLxV = nn.Dense(
          self.vocab_size, use_bias=False, dtype=cfg.dtype, param_dtype=cfg.param_dtype,
          name='head',
          kernel_init=nn.with_logical_partitioning(nn.initializers.normal(cfg.init_std),
                                                   ('embed', 'vocab')))(x_BxLxE)
    return logits_BxLxV.astype(jnp.float32)  # Loss and softmax in f32 whatever the compute dtype.


def decoder(model: TransformerLM) -> TransformerLM:
  """The same model (same params) in KV-cache decode mode."""
  return model.clone(cfg=dataclasses.replace(model.cfg, decode=True))


def init_cache(model: TransformerLM, batch_size: int) -> dict:
  """An empty cache (zeros, index 0) for `decoder(model)`; shapes come from a traced init."""
  dec = decoder(model)
  shapes = jax.eval_shape(lambda: dec.init(jax.random.key(0), jnp.zeros((batch_size, 1), jnp.int32),
                                           train=False)['cache'])
  return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)


def from_config(cfg: ml_collections.ConfigDict, meta: Meta) -> TransformerLM:
  """Builds the LM from `config.model` and the dataset's meta (vocab_size, block_size)."""
  max_len = cfg.max_len or meta.block_size  # cfg checked by models.get_model.
  if meta.block_size > max_len:
    raise ConfigError(f'config.data.block_size={meta.block_size} is larger than '
                      f'config.model.max_len={max_len} (the position table and KV cache size). '
                      'Raise config.model.max_len or lower the block size.')
  return TransformerLM(blocks.transformer_config(cfg, max_len), vocab_size=meta.vocab_size,
                       tie_embeddings=cfg.tie_embeddings)
