"""A multi-layer perceptron classifier: flatten, [Dense -> activation -> dropout] x N, Dense."""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from research.models.dropout import Dropout

ACTIVATIONS = {'relu': nn.relu, 'gelu': nn.gelu, 'silu': nn.silu, 'tanh': jnp.tanh}


class MLP(nn.Module):
  """Hidden layers alternate ('embed', 'mlp') and ('mlp', 'embed') kernels, Megatron style,

  so under tensor parallelism each pair needs one all-reduce and `fsdp` shards the other dim.
  """

  # Meanings and defaults: research/config.py (model_config); built by models.get_model.
  widths: Sequence[int]
  num_classes: int
  activation: str
  dropout_rate: float
  dtype: jnp.dtype
  param_dtype: jnp.dtype

  @nn.compact
  def __call__(self, inputs: jnp.ndarray, *, train: bool = False,
               rows: jax.Array | None = None) -> jnp.ndarray:
    """`rows`: each example's row in the global batch (keys its dropout masks)."""
    x = inputs.reshape((inputs.shape[0], -1)).astype(self.dtype)
    in_axis = 'embed'
    for i, width in enumerate(self.widths):
      out_axis = 'mlp' if in_axis == 'embed' else 'embed'
      x = nn.Dense(
          width, dtype=self.dtype, param_dtype=self.param_dtype, name=f'dense_{i}',
          kernel_init=nn.with_logical_partitioning(nn.initializers.lecun_normal(),
                                                   (in_axis, out_axis)),
          bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), (out_axis,)))(x)
      x = ACTIVATIONS[self.activation](x)
      x = Dropout(self.dropout_rate)(x, rows, deterministic=not train)
      in_axis = out_axis
    logits_BxC = nn.Dense(
        self.num_classes, dtype=self.dtype, param_dtype=self.param_dtype, name='head',
        kernel_init=nn.with_logical_partitioning(nn.initializers.lecun_normal(),
                                                 (in_axis, 'classes')),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), ('classes',)))(x)
    return logits_BxC.astype(jnp.float32)  # Loss and softmax in f32 whatever the compute dtype.
