"""research/models/lm.py: the decoder-only LM is causal (plain and grouped-query attention, learned
and rotary positions, scanned layers). Its generation: tests/test_decode.py; its config checks:
tests/test_config_checks.py; a real run and sampling: tests/integration/test_sample.py."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import LM_VARIANTS, LM_VOCAB, lm_and_params


@pytest.mark.parametrize('variant', LM_VARIANTS)
def test_future_tokens_do_not_change_earlier_logits(variant):
  model, params = lm_and_params(variant)
  tokens = jax.random.randint(jax.random.key(1), (2, 16), 0, LM_VOCAB)
  changed = tokens.at[:, 9].set((tokens[:, 9] + 7) % LM_VOCAB)
  logits = jax.jit(lambda t: model.apply({'params': params}, t, train=False))(
      jnp.concatenate([tokens, changed]))
  before, after = logits[:2], logits[2:]
  np.testing.assert_array_equal(before[:, :9], after[:, :9])
  assert np.abs(before[:, 9:] - after[:, 9:]).max() > 1e-3  # The change is seen from there on.
