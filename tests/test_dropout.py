"""Dropout keyed by each example's row in the global batch (research/models/dropout.py)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from research.models.dropout import Dropout

X = jnp.arange(1.0, 1.0 + 8 * 5 * 6).reshape(8, 5, 6)  # Nonzero: a zero output means dropped.


def drop(x, rows=None, rate=0.5, key=0, **kw):
  return Dropout(rate).apply({}, x, rows, deterministic=False,
                             rngs={'dropout': jax.random.key(key)}, **kw)


def test_a_rows_mask_does_not_depend_on_the_other_rows_or_their_order():
  full = drop(X)  # rows None: the rows are 0, 1, ..., as under jit on the global batch.
  pick = np.array([6, 1, 3])
  np.testing.assert_array_equal(drop(X[pick], jnp.array(pick)), full[pick])
  np.testing.assert_array_equal(drop(X, jnp.arange(8)), full)


def test_masks_differ_by_row_and_key_and_keep_the_expectation():
  out = np.asarray(drop(X))
  kept = out != 0
  assert len({m.tobytes() for m in kept}) == 8  # Every row its own mask.
  assert not np.array_equal(kept, np.asarray(drop(X, key=1)) != 0)
  assert 0.4 < kept.mean() < 0.6  # Bernoulli(0.5) over 240 entries.
  np.testing.assert_allclose(out[kept], np.asarray(X)[kept] / 0.5)


@pytest.mark.parametrize('rate, deterministic', [(0.0, False), (0.3, True)])
def test_no_dropout_is_the_identity_and_draws_no_key(rate, deterministic):
  # No rngs given: asking for a key would raise, so nothing is drawn.
  out = Dropout(rate).apply({}, X, jnp.arange(8), deterministic=deterministic)
  np.testing.assert_array_equal(out, X)
