"""Models by name: `get_model(config.model, dataset.meta)` returns a flax.linen Module.

Every model is called as `model.apply({'params': p}, inputs, train=..., rngs=...)` and returns
f32 logits, so one train step serves them all. Each key's default is in research/config.py
(`model_config`) and each value check in research/config_checks.py (`check_model`); the models
read `cfg.KEY` with no default of their own.
"""

from __future__ import annotations

from collections.abc import Callable

import flax.linen as nn
import jax.numpy as jnp
import ml_collections

from research.config import complete_model_config
from research.config_checks import check_model
from research.data.spec import Meta
from research.models import attention, blocks, encoder, lm, mlp


def _mlp(cfg: ml_collections.ConfigDict, meta: Meta) -> nn.Module:
  return mlp.MLP(widths=tuple(cfg.widths), num_classes=meta.num_classes,
                 activation=cfg.activation, dropout_rate=cfg.dropout_rate,
                 dtype=jnp.dtype(cfg.dtype), param_dtype=jnp.dtype(cfg.param_dtype))


def _transformer_lm(cfg: ml_collections.ConfigDict, meta: Meta) -> nn.Module:
  return lm.from_config(cfg, meta)


def _transformer_encoder(cfg: ml_collections.ConfigDict, meta: Meta) -> nn.Module:
  return encoder.from_config(cfg, meta, head='classifier')


def _transformer_encoder_mlm(cfg: ml_collections.ConfigDict, meta: Meta) -> nn.Module:
  return encoder.from_config(cfg, meta, head='mlm')


MODELS: dict[str, Callable[[ml_collections.ConfigDict, Meta], nn.Module]] = {
    'mlp': _mlp, 'transformer_lm': _transformer_lm, 'transformer_encoder': _transformer_encoder,
    'transformer_encoder_mlm': _transformer_encoder_mlm}

# The values each choice key accepts, from the code that implements them (for check_model).
CHOICES = {'name': tuple(MODELS), 'activation': tuple(mlp.ACTIVATIONS), 'norm': blocks.NORMS,
           'mlp': blocks.MLPS, 'positions': blocks.POSITIONS,
           'attention_impl': attention.IMPLEMENTATIONS, 'remat': tuple(blocks.REMAT_POLICIES),
           'pooling': encoder.POOLINGS, 'norm_position': blocks.NORM_POSITIONS,
           'gelu': blocks.GELUS}


def get_model(cfg: ml_collections.ConfigDict, meta: Meta) -> nn.Module:
  """ConfigError before any compute for a bad value; keys `cfg` lacks take their defaults."""
  cfg = complete_model_config(cfg)
  check_model(cfg, CHOICES)
  return MODELS[cfg.name](cfg, meta)
