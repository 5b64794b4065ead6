"""research/models/decode.py: KV-cache generation equals a full forward pass per token (greedy,
top-k and temperature sampling), past max_len too, for plain and grouped-query attention."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import LM_VARIANTS, LM_VOCAB, lm_and_params

from research.models.decode import generate, window_keep


def reference_choice(logits_V, key, temperature, top_k):
  """What a sampler should do, the cut written out in numpy: argmax at temperature 0, else keep the
  top_k largest logits (ties with the k-th kept; 0 = all) over the temperature and draw with
  jax.random.categorical under the same key."""
  if temperature == 0:
    return int(np.argmax(logits_V))
  scaled = np.asarray(logits_V, np.float32) / np.float32(temperature)
  if 0 < top_k < len(scaled):
    scaled = np.where(scaled < np.sort(scaled)[-top_k], -np.inf, scaled)
  return int(jax.random.categorical(key, jnp.asarray(scaled)[None])[0])


def uncached_generate(model, params, prompt, num_tokens, rng, temperature=0.0, top_k=0):
  """Reference: a full forward pass per token over the same context window the cache keeps, the
  i-th token drawn with fold_in(rng, i) as `generate` does. Also each token's rank among the
  logits it was drawn from (0 = the argmax)."""
  max_len, keep = model.cfg.max_len, window_keep(model.cfg.max_len)
  forward = jax.jit(lambda t: model.apply({'params': params}, t, train=False))
  seq = list(np.asarray(prompt[0, -max_len:]))
  filled, out, ranks = len(seq), [], []
  for i in range(num_tokens):
    context = seq[-filled:]
    padded = np.zeros((1, max_len), np.int32)  # Right padding: causal, so it is never seen.
    padded[0, :len(context)] = context
    logits_V = np.asarray(forward(padded)[0, len(context) - 1])
    token = reference_choice(logits_V, jax.random.fold_in(rng, i), temperature, top_k)
    out.append(token)
    ranks.append(int((logits_V > logits_V[token]).sum()))
    seq.append(token)
    filled = keep if filled == max_len else filled + 1
  return out, ranks


SAMPLING = {  # name: (temperature, top_k)
    'greedy': (0.0, 0),
    'top_k': (0.8, 5),
    'temperature': (1.5, 0),
}


@pytest.mark.parametrize('sampling', SAMPLING)
@pytest.mark.parametrize('variant', LM_VARIANTS)
def test_cached_generation_matches_uncached(variant, sampling):
  model, params = lm_and_params(variant)
  temperature, top_k = SAMPLING[sampling]
  prompt = np.array([[5, 17, 42, 8, 30]], np.int32)
  num_tokens = 30  # Past max_len: the cache is rebuilt from a sliding window twice.
  rng = jax.random.key(4)
  cached = jax.jit(lambda p, x: generate(model, p, x, rng, num_tokens=num_tokens,
                                         temperature=temperature, top_k=top_k))(params, prompt)
  expected, ranks = uncached_generate(model, params, prompt, num_tokens, rng, temperature, top_k)
  assert list(np.asarray(cached[0])) == expected
  assert len(set(expected)) > 3  # A real sequence, not one repeated token.
  if sampling == 'greedy':
    assert max(ranks) == 0
  else:  # Really sampled: not always the argmax; within the top k when cut.
    assert max(ranks) > 0
    assert max(ranks) < (top_k or LM_VOCAB)
