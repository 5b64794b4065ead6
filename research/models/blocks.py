"""Pre-norm Transformer blocks and the layer stack, shared by the decoder LM and the encoder.

A block never decides what it attends to: the caller passes the mask (`is_causal` for a decoder,
a padding mask for an encoder). The stack adds rematerialization (`remat`: none | full | dots)
and an optional `nn.scan` over layers (one compiled layer body: faster compiles for deep models).
"""

from __future__ import annotations

import dataclasses
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from research.models.attention import Attention
from research.models.dropout import Dropout

NORMS = ('layernorm', 'rmsnorm')
MLPS = ('gelu', 'swiglu')
POSITIONS = ('learned', 'rotary')
NORM_POSITIONS = ('pre', 'post')
GELUS = ('exact', 'tanh')
REMAT_POLICIES = {
    'none': None,
    'full': None,  # Save nothing: recompute the whole block in the backward pass.
    # Save the weight matmuls' outputs; recompute attention scores and elementwise ops.
    'dots': jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


@dataclasses.dataclass(frozen=True)
class TransformerConfig:
  """Static model hyperparameters (hashable, so modules can hold it); meanings and defaults in
  research/config.py (`model_config`), built by `transformer_config`."""

  num_layers: int
  d_model: int
  num_heads: int
  num_kv_heads: int
  d_ff: int
  max_len: int  # Position table size and KV cache length.
  dropout_rate: float  # Embeddings and residual branches.
  attention_dropout_rate: float  # Attention probabilities (explicit softmax path).
  norm: str
  mlp: str
  positions: str
  rotary_base: float
  use_bias: bool
  init_std: float
  attention_impl: str
  remat: str
  scan_layers: bool
  dtype: jnp.dtype
  param_dtype: jnp.dtype
  layernorm_epsilon: float
  norm_position: str  # 'pre' (GPT-2) | 'post' (BERT: embedding norm, no final norm).
  gelu: str  # 'exact' | 'tanh' (GPT-2's gelu_new).
  type_vocab_size: int  # Encoder token-type (segment) embeddings; 0 = none.
  pooler: bool  # Encoder classifier: BERT's dense + tanh on the pooled vector.
  decode: bool = False  # Not a config key: lm.decoder() switches it on for cached generation.

  @property
  def head_dim(self) -> int:
    return self.d_model // self.num_heads


def transformer_config(cfg: ml_collections.ConfigDict, max_len: int) -> TransformerConfig:
  """Freezes a checked `config.model` (config_checks.check_model, run by models.get_model)."""
  return TransformerConfig(
      num_layers=cfg.num_layers, d_model=cfg.d_model, num_heads=cfg.num_heads,
      num_kv_heads=cfg.num_kv_heads or cfg.num_heads,  # 0 = one KV head per query head.
      d_ff=cfg.d_ff or 4 * cfg.d_model, max_len=max_len, dropout_rate=cfg.dropout_rate,
      attention_dropout_rate=cfg.attention_dropout_rate, norm=cfg.norm, mlp=cfg.mlp,
      positions=cfg.positions, rotary_base=cfg.rotary_base, use_bias=cfg.use_bias,
      init_std=cfg.init_std, attention_impl=cfg.attention_impl, remat=cfg.remat,
      scan_layers=bool(cfg.scan_layers), dtype=jnp.dtype(cfg.dtype),
      param_dtype=jnp.dtype(cfg.param_dtype), layernorm_epsilon=float(cfg.layernorm_epsilon),
      norm_position=cfg.norm_position, gelu=cfg.gelu, type_vocab_size=cfg.type_vocab_size,
      pooler=bool(cfg.pooler))


def make_norm(cfg: TransformerConfig, name: str) -> nn.Module:
  scale_init = nn.with_logical_partitioning(nn.initializers.ones_init(), ('norm',))
  if cfg.norm == 'rmsnorm':
    return nn.RMSNorm(epsilon=1e-6, dtype=cfg.dtype, param_dtype=cfg.param_dtype,
                      scale_init=scale_init, name=name)
  return nn.LayerNorm(epsilon=cfg.layernorm_epsilon, use_bias=cfg.use_bias, dtype=cfg.dtype,
                      param_dtype=cfg.param_dtype, scale_init=scale_init, name=name,
                      bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(),
                                                             ('norm',)))


def embed_norm(cfg: TransformerConfig, x_BxLxE: jax.Array) -> jax.Array:
  """Post-norm models (BERT) normalize the summed embeddings; pre-norm ones leave them."""
  return make_norm(cfg, 'embed_norm')(x_BxLxE) if cfg.norm_position == 'post' else x_BxLxE


def final_norm(cfg: TransformerConfig, x_BxLxE: jax.Array) -> jax.Array:
  """Pre-norm stacks end un-normalized, so they get a final norm; post-norm ones do not."""
  return make_norm(cfg, 'final_norm')(x_BxLxE) if cfg.norm_position == 'pre' else x_BxLxE


def gelu(cfg: TransformerConfig, x: jax.Array) -> jax.Array:
  """Exact GELU (BERT, nanoGPT), or the tanh approximation (GPT-2's `gelu_new`)."""
  return nn.gelu(x, approximate=cfg.gelu == 'tanh')


def residual_init_std(cfg: TransformerConfig) -> float:
  """GPT-2: each residual projection scaled by 1/sqrt(2 * num_layers) (two per block)."""
  return cfg.init_std / math.sqrt(2 * cfg.num_layers)


class Mlp(nn.Module):
  """GELU MLP (E -> d_ff -> E), or SwiGLU: silu(x W_gate) * (x W_up) -> E."""

  cfg: TransformerConfig

  def _dense(self, features: int, axes: tuple[str, str], std: float, name: str) -> nn.Module:
    cfg = self.cfg
    return nn.Dense(features, use_bias=cfg.use_bias, dtype=cfg.dtype, param_dtype=cfg.param_dtype,
                    name=name,
                    kernel_init=nn.with_logical_partitioning(nn.initializers.normal(std), axes),
                    bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(),
                                                           axes[1:]))

  @nn.compact
  def __call__(self, x_BxLxE: jax.Array) -> jax.Array:
    cfg = self.cfg
    up = self._dense(cfg.d_ff, ('embed', 'mlp'), cfg.init_std, 'up')(x_BxLxE)
    if cfg.mlp == 'swiglu':
      gate = self._dense(cfg.d_ff, ('embed', 'mlp'), cfg.init_std, 'gate')(x_BxLxE)
      h_BxLxF = nn.silu(gate) * up
    else:
      h_BxLxF = gelu(cfg, up)
    return self._dense(cfg.d_model, ('mlp', 'embed'), residual_init_std(cfg), 'down')(h_BxLxF)


class Block(nn.Module):
  """Pre-norm: x + Attn(Norm(x)), then x + Mlp(Norm(x)). Post-norm (BERT, the original
  Transformer): Norm(x + Attn(x)), then Norm(x + Mlp(x)). Dropout on each residual branch."""

  cfg: TransformerConfig

  @nn.compact
  def __call__(self, x_BxLxE: jax.Array, mask: jax.Array | None, is_causal: bool,
               positions_L: jax.Array | None, decode_index: jax.Array | None,
               train: bool, rows: jax.Array | None = None) -> jax.Array:
    cfg = self.cfg
    dropout = Dropout(cfg.dropout_rate)
    drop = lambda h: dropout(h, rows, deterministic=not train)
    pre = cfg.norm_position == 'pre'
    attn_norm, mlp_norm = make_norm(cfg, 'attn_norm'), make_norm(cfg, 'mlp_norm')
    h = attn_norm(x_BxLxE) if pre else x_BxLxE
    h = Attention(
        num_heads=cfg.num_heads, num_kv_heads=cfg.num_kv_heads, head_dim=cfg.head_dim,
        rotary=cfg.positions == 'rotary', rotary_base=cfg.rotary_base,
        dropout_rate=cfg.attention_dropout_rate, use_bias=cfg.use_bias, init_std=cfg.init_std,
        out_init_std=residual_init_std(cfg), implementation=cfg.attention_impl,
        decode=cfg.decode, max_len=cfg.max_len, dtype=cfg.dtype, param_dtype=cfg.param_dtype,
        name='attn')(h, mask=mask, is_causal=is_causal, positions_L=positions_L,
                     decode_index=decode_index, train=train, rows=rows)
    x_BxLxE = x_BxLxE + drop(h)
    if not pre:
      x_BxLxE = attn_norm(x_BxLxE)
    h = Mlp(cfg, name='mlp')(mlp_norm(x_BxLxE) if pre else x_BxLxE)
    x_BxLxE = x_BxLxE + drop(h)
    return x_BxLxE if pre else mlp_norm(x_BxLxE)


class _ScanLayer(nn.Module):
  """One layer as an `nn.scan` body: (carry, *broadcast args) -> (carry, None)."""

  cfg: TransformerConfig

  @nn.compact
  def __call__(self, x_BxLxE, mask, is_causal, positions_L, decode_index, train, rows):
    return Block(self.cfg, name='block')(x_BxLxE, mask, is_causal, positions_L, decode_index,
                                         train, rows), None


def _maybe_remat(cls, cfg: TransformerConfig):
  if cfg.remat == 'none':
    return cls
  # Arg 0 is the module; is_causal (3) and train (6) are Python bools that pick the code path.
  return nn.remat(cls, static_argnums=(3, 6), policy=REMAT_POLICIES[cfg.remat],
                  prevent_cse=not cfg.scan_layers)  # scan already keeps XLA from CSE-ing.


class TransformerStack(nn.Module):
  """num_layers blocks, unrolled or scanned; the caller supplies mask/positions."""

  cfg: TransformerConfig

  @nn.compact
  def __call__(self, x_BxLxE: jax.Array, *, mask: jax.Array | None = None,
               is_causal: bool = False, positions_L: jax.Array | None = None,
               decode_index: jax.Array | None = None, train: bool = False,
               rows: jax.Array | None = None) -> jax.Array:
    cfg = self.cfg
    args = (mask, is_causal, positions_L, decode_index, train, rows)
    if cfg.scan_layers:
      layers = nn.scan(_maybe_remat(_ScanLayer, cfg),
                       variable_axes={'params': 0, 'cache': 0},
                       split_rngs={'params': True, 'dropout': True},
                       in_axes=(nn.broadcast,) * len(args), length=cfg.num_layers,
                       metadata_params={nn.PARTITION_NAME: 'layers'})
      x_BxLxE, _ = layers(cfg, name='layers')(x_BxLxE, *args)
      return x_BxLxE
    block = _maybe_remat(Block, cfg)
    for i in range(cfg.num_layers):
      x_BxLxE = block(cfg, name=f'block_{i}')(x_BxLxE, *args)
    return x_BxLxE
