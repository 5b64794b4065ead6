"""research/models/mlp.py: the MLP classifier's outputs and parameter dtypes."""

import jax
import jax.numpy as jnp
import ml_collections

from research.data.spec import Meta
from research.models import get_model


def test_mlp_output_shape_and_dtype():
  cfg = ml_collections.ConfigDict({'name': 'mlp', 'widths': (32, 16), 'activation': 'gelu',
                                   'dropout_rate': 0.1, 'dtype': 'bfloat16',
                                   'param_dtype': 'float32'})
  model = get_model(cfg, Meta('classification', num_classes=10))
  x = jnp.ones((4, 28, 28, 1))
  params = model.init(jax.random.key(0), inputs=x)['params']
  logits = model.apply({'params': params}, inputs=x, train=True,
                       rngs={'dropout': jax.random.key(1)})
  assert logits.shape == (4, 10) and logits.dtype == jnp.float32
  kernel = jax.tree.leaves(params)[1]
  assert kernel.dtype == jnp.float32  # Params stay f32 under bf16 compute.
