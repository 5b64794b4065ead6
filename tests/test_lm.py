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


@pytest.mark.parametrize('variant', LM_VARIANTS)
def test_packed_documents_score_as_if_run_alone(variant):
  """segment_ids mask attention to a document and positions restart in it: each packed
  document's logits equal the same document run by itself (learned and rotary positions)."""
  model, params = lm_and_params(variant)
  apply = jax.jit(lambda t, **kw: model.apply({'params': params}, t, train=False, **kw))
  docs = [jax.random.randint(jax.random.key(i), (1, n), 0, LM_VOCAB) for i, n in
          enumerate((5, 7, 4))]
  packed = jnp.concatenate(docs, axis=1)  # 16 tokens: the model's max_len.
  segment_ids = jnp.concatenate([jnp.full((1, d.shape[1]), i + 1) for i, d in enumerate(docs)], 1)
  positions = jnp.concatenate([jnp.arange(d.shape[1])[None] for d in docs], 1)
  logits = apply(packed, segment_ids=segment_ids, positions=positions)
  start = 0
  for doc in docs:
    alone = apply(doc)
    np.testing.assert_allclose(logits[:, start:start + doc.shape[1]], alone, atol=2e-5, rtol=0)
    start += doc.shape[1]
  # Without the mask the later documents see the first: the test can tell.
  unmasked = apply(packed, positions=positions)
  assert np.abs(unmasked[:, 5:12] - apply(docs[1])).max() > 1e-3


def test_one_segment_is_the_unpacked_model():
  model, params = lm_and_params('mha_learned')
  tokens = jax.random.randint(jax.random.key(3), (2, 16), 0, LM_VOCAB)
  plain = model.apply({'params': params}, tokens, train=False)
  packed = model.apply({'params': params}, tokens, train=False,
                       segment_ids=jnp.ones((2, 16), jnp.int32),
                       positions=jnp.broadcast_to(jnp.arange(16), (2, 16)))
  np.testing.assert_allclose(packed, plain, atol=1e-6, rtol=0)
