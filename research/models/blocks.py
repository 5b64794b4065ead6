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

from research.config_checks import suggest
from research.errors import ConfigError
from research.models.attention import IMPLEMENTATIONS, Attention
from research.models.dropout import Dropout

NORMS = ('layernorm', 'rmsnorm')
MLPS = ('gelu', 'swiglu')
POSITIONS = ('learned', 'rotary')
REMAT_POLICIES = {
    'none': None,
    'full': None,  # Save nothing: recompute the whole block in the backward pass.
    # Save the weight matmuls' outputs; recompute attention scores and elementwise ops.
    'dots': jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


@dataclasses.dataclass(frozen=True)
class TransformerConfig:
  """Static model hyperparameters (hashable, so modules can hold it)."""

  num_layers: int
  d_model: int
  num_heads: int
  num_kv_heads: int
  d_ff: int
  max_len: int  # Position table size and KV cache length.
  dropout_rate: float = 0.0  # Embeddings and residual branches.
  attention_dropout_rate: float = 0.0  # Attention probabilities (explicit softmax path).
  norm: str = 'layernorm'
  mlp: str = 'gelu'
  positions: str = 'learned'
  rotary_base: float = 10000.0
  use_bias: bool = False
  init_std: float = 0.02
  attention_impl: str = 'xla'
  remat: str = 'none'
  scan_layers: bool = False
  decode: bool = False
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32

  @property
  def head_dim(self) -> int:
    return self.d_model // self.num_heads


def _choice(cfg: ml_collections.ConfigDict, key: str, default: str, choices) -> str:
  value = cfg.get(key, default)
  if value not in choices:
    raise ConfigError(f'config.model.{key}={value!r} is not one of {list(choices)}.'
                      f'{suggest(str(value), list(choices))}')
  return value


def _dtype(cfg: ml_collections.ConfigDict, key: str) -> jnp.dtype:
  try:
    return jnp.dtype(cfg.get(key, 'float32'))
  except TypeError as e:
    raise ConfigError(f'config.model.{key}={cfg.get(key)!r} is not a dtype '
                      '(e.g. float32, bfloat16).') from e


def transformer_config(cfg: ml_collections.ConfigDict, max_len: int) -> TransformerConfig:
  """Validates `config.model` (raising ConfigError before any compute) and freezes it."""
  for key in ('num_layers', 'd_model', 'num_heads'):
    if not isinstance(cfg.get(key), int) or cfg.get(key) <= 0:
      raise ConfigError(f'config.model.{key} must be a positive integer, got {cfg.get(key)!r}.')
  kv_heads = cfg.get('num_kv_heads', 0) or cfg.num_heads  # 0 = one KV head per query head.
  if cfg.d_model % cfg.num_heads:
    raise ConfigError(f'config.model.d_model={cfg.d_model} is not divisible by '
                      f'config.model.num_heads={cfg.num_heads}.')
  if kv_heads <= 0 or cfg.num_heads % kv_heads:
    raise ConfigError(f'config.model.num_heads={cfg.num_heads} is not divisible by '
                      f'config.model.num_kv_heads={kv_heads} (grouped-query attention shares '
                      'each KV head among num_heads / num_kv_heads query heads).')
  for key in ('dropout_rate', 'attention_dropout_rate'):
    if not 0.0 <= cfg.get(key, 0.0) < 1.0:
      raise ConfigError(f'config.model.{key} must be in [0, 1), got {cfg.get(key)!r}.')
  out = TransformerConfig(
      num_layers=cfg.num_layers, d_model=cfg.d_model, num_heads=cfg.num_heads,
      num_kv_heads=kv_heads, d_ff=cfg.get('d_ff', 0) or 4 * cfg.d_model, max_len=max_len,
      dropout_rate=cfg.get('dropout_rate', 0.0),
      attention_dropout_rate=cfg.get('attention_dropout_rate', 0.0),
      norm=_choice(cfg, 'norm', 'layernorm', NORMS), mlp=_choice(cfg, 'mlp', 'gelu', MLPS),
      positions=_choice(cfg, 'positions', 'learned', POSITIONS),
      rotary_base=cfg.get('rotary_base', 10000.0), use_bias=cfg.get('use_bias', False),
      init_std=cfg.get('init_std', 0.02),
      attention_impl=_choice(cfg, 'attention_impl', 'xla', IMPLEMENTATIONS),
      remat=_choice(cfg, 'remat', 'none', REMAT_POLICIES),
      scan_layers=bool(cfg.get('scan_layers', False)),
      dtype=_dtype(cfg, 'dtype'), param_dtype=_dtype(cfg, 'param_dtype'))
  if out.positions == 'rotary' and out.head_dim % 2:
    raise ConfigError(f'Rotary positions need an even head dim; d_model / num_heads = '
                      f'{out.head_dim}.')
  if out.attention_impl == 'cudnn':
    _check_cudnn(out)
  return out


def _check_cudnn(cfg: TransformerConfig) -> None:
  if jax.default_backend() != 'gpu':
    raise ConfigError(f"config.model.attention_impl='cudnn' needs an NVIDIA GPU; this run is on "
                      f"{jax.default_backend()}. Use attention_impl='xla'.")
  if cfg.dtype not in (jnp.bfloat16, jnp.float16):
    raise ConfigError(f"config.model.attention_impl='cudnn' needs config.model.dtype bfloat16 or "
                      f"float16 (cuDNN flash attention has no {cfg.dtype} kernel).")
  if cfg.attention_dropout_rate:
    raise ConfigError("config.model.attention_impl='cudnn' runs without attention-probability "
                      'dropout; set config.model.attention_dropout_rate=0.')


def make_norm(cfg: TransformerConfig, name: str) -> nn.Module:
  scale_init = nn.with_logical_partitioning(nn.initializers.ones_init(), ('norm',))
  if cfg.norm == 'rmsnorm':
    return nn.RMSNorm(epsilon=1e-6, dtype=cfg.dtype, param_dtype=cfg.param_dtype,
                      scale_init=scale_init, name=name)
  return nn.LayerNorm(epsilon=1e-5, use_bias=cfg.use_bias, dtype=cfg.dtype,
                      param_dtype=cfg.param_dtype, scale_init=scale_init, name=name,
                      bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(),
                                                             ('norm',)))


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
      h_BxLxF = nn.gelu(up, approximate=False)  # Exact GELU, as GPT-2 / nanoGPT.
    return self._dense(cfg.d_model, ('mlp', 'embed'), residual_init_std(cfg), 'down')(h_BxLxF)


class Block(nn.Module):
  """x + Attn(Norm(x)), then x + Mlp(Norm(x)); dropout on each residual branch."""

  cfg: TransformerConfig

  @nn.compact
  def __call__(self, x_BxLxE: jax.Array, mask: jax.Array | None, is_causal: bool,
               positions_L: jax.Array | None, decode_index: jax.Array | None,
               train: bool, rows: jax.Array | None = None) -> jax.Array:
    cfg = self.cfg
    dropout = Dropout(cfg.dropout_rate)
    drop = lambda h: dropout(h, rows, deterministic=not train)
    h = make_norm(cfg, 'attn_norm')(x_BxLxE)
    h = Attention(
        num_heads=cfg.num_heads, num_kv_heads=cfg.num_kv_heads, head_dim=cfg.head_dim,
        rotary=cfg.positions == 'rotary', rotary_base=cfg.rotary_base,
        dropout_rate=cfg.attention_dropout_rate, use_bias=cfg.use_bias, init_std=cfg.init_std,
        out_init_std=residual_init_std(cfg), implementation=cfg.attention_impl,
        decode=cfg.decode, max_len=cfg.max_len, dtype=cfg.dtype, param_dtype=cfg.param_dtype,
        name='attn')(h, mask=mask, is_causal=is_causal, positions_L=positions_L,
                     decode_index=decode_index, train=train, rows=rows)
    x_BxLxE = x_BxLxE + drop(h)
    h = Mlp(cfg, name='mlp')(make_norm(cfg, 'mlp_norm')(x_BxLxE))
    return x_BxLxE + drop(h)


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
