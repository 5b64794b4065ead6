"""Bidirectional Transformer encoder: a classifier, or a masked-LM for pre-training.

The blocks are the LM's (`blocks.TransformerStack`); only the mask, the pooling and the head
differ. Inputs are either token ids with a 0/1 `input_mask` (text, right-padded) or an array of
shape B x *spatial x C cut into non-overlapping patches of `patch_size` along every spatial
dimension (ViT; a 1-D signal is B x T x C).

  classifier: `model.apply({'params': p}, inputs=..., input_mask=..., train=...)` -> logits_BxC
  mlm:        the same call -> logits_BxLxV at every input position, or, given `mlm_positions`
              (BxK indices), logits_BxKxV at those only (BERT's trick: the projection onto the
              vocabulary dominates the cost, and only masked positions have a loss).

A learned [CLS] vector is prepended when `pooling='cls'` (also for MLM pre-training, so a
fine-tuned classifier finds its positions where the pre-trained model had them). Parameter names
are shared between the two heads (`token_embed`, `position_embed`, `cls_embed`, `stack`,
`final_norm`), so `config.init_from` can carry an MLM run's encoder into a classifier.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from research.data.spec import Meta
from research.errors import ConfigError
from research.models import blocks
from research.models.dropout import Dropout

# cls: a learned [CLS] vector prepended; first: the input's own first token (a [CLS] the tokenizer
# added, as BERT's); mean: the mean over valid tokens.
POOLINGS = ('cls', 'first', 'mean')
HEADS = ('classifier', 'mlm')


def patch_grid(input_shape: tuple[int, ...], patch_size: int) -> tuple[int, ...]:
  """Patches per spatial dimension of a *spatial x C input; ConfigError if one does not divide."""
  spatial = tuple(input_shape[:-1])
  bad = [s for s in spatial if s % patch_size]
  if not spatial or bad:
    raise ConfigError(f'Input of shape {tuple(input_shape)} (spatial x channels) is not divisible '
                      f'into patches of config.model.patch_size={patch_size}: spatial size(s) '
                      f'{bad or spatial} leave a remainder. Pick a patch size that divides '
                      f'{spatial}.')
  return tuple(s // patch_size for s in spatial)


def patchify(x_BxSxC: jax.Array, patch_size: int) -> jax.Array:
  """B x S1 x ... x Sn x C -> B x (S1/p * ... * Sn/p) x (p^n * C), patches in row-major order."""
  batch, *spatial, channels = x_BxSxC.shape
  grid = patch_grid(tuple(spatial) + (channels,), patch_size)
  n = len(grid)
  split = [batch] + [d for g in grid for d in (g, patch_size)] + [channels]
  perm = [0] + [1 + 2 * i for i in range(n)] + [2 + 2 * i for i in range(n)] + [2 * n + 1]
  patches = x_BxSxC.reshape(split).transpose(perm)
  return patches.reshape(batch, math.prod(grid), patch_size ** n * channels)


class TransformerEncoder(nn.Module):
  cfg: blocks.TransformerConfig
  num_outputs: int  # Classes (classifier) or vocabulary size (mlm).
  pooling: str  # config.model.pooling.
  vocab_size: int = 0  # > 0: token-id inputs; 0: patch inputs.
  patch_size: int = 0
  head: str = 'classifier'

  def _dense(self, features: int, axes: tuple, name: str) -> nn.Dense:
    cfg = self.cfg
    return nn.Dense(features, dtype=cfg.dtype, param_dtype=cfg.param_dtype, name=name,
                    kernel_init=nn.with_logical_partitioning(
                        nn.initializers.normal(cfg.init_std), axes),
                    bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(),
                                                           axes[1:]))

  def _param(self, name: str, shape: tuple[int, ...], axes: tuple) -> jax.Array:
    init = nn.with_logical_partitioning(nn.initializers.normal(self.cfg.init_std), axes)
    return self.param(name, init, shape, self.cfg.param_dtype).astype(self.cfg.dtype)

  def _check_length(self, length: int) -> None:
    """At trace time, so before any compute: the position table must cover the sequence."""
    if length > self.cfg.max_len:
      extra = ' (including [CLS])' if self.pooling == 'cls' else ''
      raise ConfigError(f'The input is {length} positions long{extra} but the position table '
                        f'has config.model.max_len={self.cfg.max_len}. Raise model.max_len or '
                        'shorten the input (data.max_len, or a larger patch_size).')

  @nn.compact
  def __call__(self, inputs: jax.Array, input_mask: jax.Array | None = None,
               mlm_positions: jax.Array | None = None, token_types: jax.Array | None = None, *,
               train: bool = False, rows: jax.Array | None = None) -> jax.Array:
    """`rows`: each example's row in the global batch (keys its dropout masks). `token_types`:
    BERT's segment ids (model.type_vocab_size > 0; None = all 0, a single sentence)."""
    cfg = self.cfg
    embed = None
    if self.vocab_size:
      embed = nn.Embed(self.vocab_size, cfg.d_model, dtype=cfg.dtype,
                       param_dtype=cfg.param_dtype, name='token_embed',
                       embedding_init=nn.with_logical_partitioning(
                           nn.initializers.normal(cfg.init_std), ('vocab', 'embed')))
      x_BxLxE = embed(inputs)
    else:
      patches = patchify(inputs.astype(cfg.dtype), self.patch_size)
      x_BxLxE = self._dense(cfg.d_model, (None, 'embed'), 'patch_embed')(patches)
    batch, length = x_BxLxE.shape[:2]
    mask_BxL = None if input_mask is None else input_mask.astype(bool)
    if self.pooling == 'cls':
      cls_1xE = self._param('cls_embed', (1, cfg.d_model), (None, 'embed'))
      x_BxLxE = jnp.concatenate([jnp.broadcast_to(cls_1xE, (batch, 1, cfg.d_model)), x_BxLxE], 1)
      if mask_BxL is not None:
        mask_BxL = jnp.concatenate([jnp.ones((batch, 1), bool), mask_BxL], axis=1)
    total = x_BxLxE.shape[1]
    self._check_length(total)
    positions_L = jnp.arange(total)
    if cfg.positions == 'learned':
      table = self._param('position_embed', (cfg.max_len, cfg.d_model), ('length', 'embed'))
      x_BxLxE = x_BxLxE + table[:total][None]
    if cfg.type_vocab_size:
      types = self._param('type_embed', (cfg.type_vocab_size, cfg.d_model), (None, 'embed'))
      x_BxLxE = x_BxLxE + (table_rows(types, token_types) if token_types is not None
                           else types[0][None, None])
    x_BxLxE = blocks.embed_norm(cfg, x_BxLxE)
    x_BxLxE = Dropout(cfg.dropout_rate)(x_BxLxE, rows, deterministic=not train)
    # Bidirectional: every query sees every valid key; padded keys are never attended.
    attn_mask = None if mask_BxL is None else mask_BxL[:, None, None, :]
    x_BxLxE = blocks.TransformerStack(cfg, name='stack')(
        x_BxLxE, mask=attn_mask, is_causal=False, positions_L=positions_L, train=train,
        rows=rows)
    x_BxLxE = blocks.final_norm(cfg, x_BxLxE)
    if self.head == 'mlm':
      x_BxLxE = x_BxLxE[:, total - length:]  # Drop [CLS]: one output per input token.
      if mlm_positions is not None:
        x_BxLxE = jnp.take_along_axis(x_BxLxE, mlm_positions[..., None].astype(jnp.int32), 1)
      return self._mlm_logits(x_BxLxE, embed)
    return self._classify(x_BxLxE, mask_BxL, train, rows)

  def _classify(self, x_BxLxE: jax.Array, mask_BxL: jax.Array | None, train: bool,
                rows: jax.Array | None) -> jax.Array:
    if self.pooling in ('cls', 'first'):
      pooled_BxE = x_BxLxE[:, 0]
    elif mask_BxL is None:
      pooled_BxE = x_BxLxE.mean(axis=1)
    else:  # Mean over valid tokens only; an all-padding row (padded eval example) gives zeros.
      weights = mask_BxL.astype(x_BxLxE.dtype)[..., None]
      pooled_BxE = (x_BxLxE * weights).sum(1) / jnp.maximum(weights.sum(1), 1.0)
    if self.cfg.pooler:  # BERT's pooler, which BertForSequenceClassification puts before its head.
      pooled_BxE = jnp.tanh(self._dense(self.cfg.d_model, ('embed', 'mlp'), 'pooler')(pooled_BxE))
    pooled_BxE = Dropout(self.cfg.dropout_rate)(pooled_BxE, rows, deterministic=not train)
    logits_BxC = self._dense(self.num_outputs, ('embed', 'classes'), 'head')(pooled_BxE)
    return logits_BxC.astype(jnp.float32)

  def _mlm_logits(self, x_BxLxE: jax.Array, embed: nn.Embed) -> jax.Array:
    """BERT's MLM head: dense + GELU + norm, then the (tied) token embedding and a bias."""
    h = blocks.gelu(self.cfg, self._dense(self.cfg.d_model, ('embed', 'mlp'), 'mlm_dense')(x_BxLxE))
    h = blocks.make_norm(self.cfg, 'mlm_norm')(h)
    bias = self.param('mlm_bias', nn.with_logical_partitioning(nn.initializers.zeros_init(),
                                                               ('vocab',)),
                      (self.num_outputs,), self.cfg.param_dtype)
    logits_BxLxV = embed.attend(h) + bias.astype(self.cfg.dtype)
    return logits_BxLxV.astype(jnp.float32)


def table_rows(table_VxE: jax.Array, ids: jax.Array) -> jax.Array:
  return jnp.take(table_VxE, ids.astype(jnp.int32), axis=0)


def sequence_length(cfg: ml_collections.ConfigDict, meta: Meta) -> tuple[int, int]:
  """(positions the encoder sees including [CLS], patch size or 0), checked before compute."""
  if meta.vocab_size:
    length, patch_size = meta.max_len, 0
  else:
    patch_size = cfg.patch_size  # Its type and sign: config_checks.check_model.
    if patch_size <= 0:
      raise ConfigError('config.model.patch_size must be a positive integer for '
                        f'{meta.input_shape} inputs, got {patch_size!r}.')
    length = math.prod(patch_grid(meta.input_shape, patch_size))
  return length + (cfg.pooling == 'cls'), patch_size


def from_config(cfg: ml_collections.ConfigDict, meta: Meta, head: str) -> TransformerEncoder:
  """Builds the encoder from a checked `config.model` (models.get_model) and the dataset's meta;
  a ConfigError before compute where the two do not fit."""
  pooling = cfg.pooling
  task = meta.task
  want = 'mlm' if head == 'mlm' else 'classification'
  if task != want:
    raise ConfigError(f'config.model.name={cfg.name!r} needs a {want!r} dataset, but '
                      f'{task!r} data was configured (e.g. data.objective).')
  if head == 'mlm' and not meta.vocab_size:
    raise ConfigError('The masked-LM head needs token inputs (a dataset with a vocabulary).')
  length, patch_size = sequence_length(cfg, meta)
  max_len = cfg.max_len or length
  if length > max_len:
    what = 'data.max_len' if meta.vocab_size else 'the number of patches'
    raise ConfigError(f'Sequences of {length} positions ({what}'
                      f'{" + 1 for [CLS]" if pooling == "cls" else ""}) are longer than the '
                      f'position table, config.model.max_len={max_len}. Raise model.max_len or '
                      'shorten the input.')
  return TransformerEncoder(
      blocks.transformer_config(cfg, max_len),
      num_outputs=meta.vocab_size if head == 'mlm' else meta.num_classes,
      vocab_size=meta.vocab_size or 0, patch_size=patch_size, pooling=pooling, head=head)
