"""Models by name: `get_model(config.model, dataset.meta)` returns a flax.linen Module.

Every model is called as `model.apply({'params': p}, inputs, train=..., rngs=...)` and returns
f32 logits, so one train step serves them all.
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp
import ml_collections

from research.config_checks import suggest
from research.data.spec import Meta
from research.errors import ConfigError


def _dtypes(cfg: ml_collections.ConfigDict) -> dict:
  return {'dtype': jnp.dtype(cfg.get('dtype', 'float32')),
          'param_dtype': jnp.dtype(cfg.get('param_dtype', 'float32'))}


def _mlp(cfg: ml_collections.ConfigDict, meta: Meta) -> nn.Module:
  from research.models.mlp import ACTIVATIONS, MLP

  if cfg.activation not in ACTIVATIONS:
    raise ConfigError(f'config.model.activation={cfg.activation!r} is not one of '
                      f'{sorted(ACTIVATIONS)}.{suggest(cfg.activation, list(ACTIVATIONS))}')
  if not all(isinstance(w, int) and w > 0 for w in cfg.widths):
    raise ConfigError(f'config.model.widths must be positive integers, got {cfg.widths!r}.')
  return MLP(widths=tuple(cfg.widths), num_classes=meta.num_classes, activation=cfg.activation,
             dropout_rate=cfg.dropout_rate, **_dtypes(cfg))


def _transformer_lm(cfg: ml_collections.ConfigDict, meta: Meta) -> nn.Module:
  from research.models.lm import from_config

  return from_config(cfg, meta)


def _transformer_encoder(cfg: ml_collections.ConfigDict, meta: Meta) -> nn.Module:
  from research.models.encoder import from_config

  return from_config(cfg, meta, head='classifier')


def _transformer_encoder_mlm(cfg: ml_collections.ConfigDict, meta: Meta) -> nn.Module:
  from research.models.encoder import from_config

  return from_config(cfg, meta, head='mlm')


MODELS = {'mlp': _mlp, 'transformer_lm': _transformer_lm,
          'transformer_encoder': _transformer_encoder,
          'transformer_encoder_mlm': _transformer_encoder_mlm}


def get_model(cfg: ml_collections.ConfigDict, meta: Meta) -> nn.Module:
  if cfg.name not in MODELS:
    raise ConfigError(f'Unknown model config.model.name={cfg.name!r}; known: {sorted(MODELS)}.'
                      f'{suggest(cfg.name, list(MODELS))}')
  return MODELS[cfg.name](cfg, meta)
