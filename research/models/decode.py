"""Text generation from a TransformerLM with a KV cache, as ONE compiled program.

`generate` prefills the cache with the prompt, then a `lax.scan` decodes one token per step, all
at fixed shapes. Past `max_len` positions (the position table / cache size) the context slides as
in nanoGPT, in chunks: when the cache is full it is rebuilt from the last `keep` tokens (one
prefill every max_len - keep tokens), so each token sees between `keep` and `max_len` tokens of
context, exactly what an uncached model given that same window would see.

Used by the in-training sample (hooks.py), --mode=sample (tools/sample.py) and inference.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from research.data.tokenizers import Tokenizer
from research.errors import ConfigError
from research.models.lm import TransformerLM, decoder, init_cache


def window_keep(max_len: int) -> int:
  """Tokens kept when a full cache is rebuilt: 3/4 of it (at least one)."""
  return max(1, max_len - max(1, max_len // 4))


def sample_logits(logits_BxV: jax.Array, rng: jax.Array, temperature: float,
                  top_k: int) -> jax.Array:
  """Next tokens: argmax at temperature 0, else softmax(logits / T) over the top_k (0 = all)."""
  if temperature == 0:
    return jnp.argmax(logits_BxV, axis=-1).astype(jnp.int32)
  logits_BxV = logits_BxV / temperature
  if 0 < top_k < logits_BxV.shape[-1]:
    kth_Bx1 = jax.lax.top_k(logits_BxV, top_k)[0][:, -1:]
    logits_BxV = jnp.where(logits_BxV < kth_Bx1, -jnp.inf, logits_BxV)
  return jax.random.categorical(rng, logits_BxV).astype(jnp.int32)


def generate(model: TransformerLM, params, prompt_BxP: jax.Array, rng: jax.Array, *,
             num_tokens: int, temperature: float = 1.0, top_k: int = 0) -> jax.Array:
  """num_tokens new tokens (BxN) after the prompt; jit it with everything but arrays static."""
  dec, max_len = decoder(model), model.cfg.max_len
  keep = window_keep(max_len)
  context_BxC = prompt_BxP[:, -max_len:]  # A longer prompt keeps its last max_len tokens.
  batch, ctx_len = context_BxC.shape
  empty = init_cache(model, batch)

  def run(cache, tokens_BxL):
    logits, variables = dec.apply({'params': params, 'cache': cache}, tokens_BxL, train=False,
                                  mutable=['cache'])
    return logits[:, -1], variables['cache']

  logits_BxV, cache = run(empty, context_BxC)  # Prefill.
  tokens = jnp.zeros((batch, ctx_len + num_tokens), jnp.int32).at[:, :ctx_len].set(context_BxC)

  def step(carry, i):
    cache, filled, logits_BxV, tokens = carry
    token_B = sample_logits(logits_BxV, jax.random.fold_in(rng, i), temperature, top_k)
    tokens = jax.lax.dynamic_update_slice_in_dim(tokens, token_B[:, None], ctx_len + i, axis=1)

    def rebuild(_):  # Cache full: restart it from the last `keep` tokens.
      window = jax.lax.dynamic_slice_in_dim(tokens, ctx_len + i + 1 - keep, keep, axis=1)
      return (*run(empty, window), jnp.int32(keep))

    def append(_):
      return (*run(cache, token_B[:, None]), filled + 1)

    if ctx_len + num_tokens - 1 < max_len:  # Static: the cache never fills up.
      logits_BxV, cache, filled = append(None)
    else:
      logits_BxV, cache, filled = jax.lax.cond(filled == max_len, rebuild, append, None)
    return (cache, filled, logits_BxV, tokens), token_B

  carry = (cache, jnp.int32(ctx_len), logits_BxV, tokens)
  _, tokens_NxB = jax.lax.scan(step, carry, jnp.arange(num_tokens))
  return tokens_NxB.T


def make_sampler(model: TransformerLM, *, num_tokens: int, temperature: float, top_k: int):
  """jit(params, prompt_BxP, rng) -> tokens_BxN; compiles once per prompt shape."""
  return jax.jit(functools.partial(generate, model, num_tokens=num_tokens,
                                   temperature=temperature, top_k=top_k))


def check_sample_args(num_tokens: int, temperature: float, top_k: int) -> None:
  if num_tokens <= 0:
    raise ConfigError(f'num_tokens must be positive, got {num_tokens}.')
  if temperature < 0:
    raise ConfigError(f'temperature must be >= 0 (0 = greedy), got {temperature}.')
  if top_k < 0:
    raise ConfigError(f'top_k must be >= 0 (0 = no cut-off), got {top_k}.')


def encode_prompt(tokenizer: Tokenizer, prompt: str) -> np.ndarray:
  """The prompt's ids, 1xP; ConfigError for an empty prompt or one the tokenizer refuses."""
  if not prompt:
    raise ConfigError('The prompt is empty; give at least one character (e.g. a newline).')
  return tokenizer.encode(prompt, 'prompt')[None]


@dataclasses.dataclass(frozen=True, eq=False)
class Sampling:
  """One fixed-prompt sample per evaluation (config.sample), checked and encoded up front, so a
  bad prompt fails before training starts."""

  prompt: str
  prompt_1xP: np.ndarray
  num_tokens: int
  temperature: float
  top_k: int
  seed: int

  @classmethod
  def from_config(cls, sample: ml_collections.ConfigDict | None,
                  tokenizer: Tokenizer) -> Sampling | None:
    """None when config.sample is absent or asks for no tokens."""
    if sample is None or sample.num_tokens <= 0:
      return None
    check_sample_args(sample.num_tokens, sample.temperature, sample.top_k)
    return cls(sample.prompt, encode_prompt(tokenizer, sample.prompt), sample.num_tokens,
               sample.temperature, sample.top_k, sample.seed)

  def sampler(self, model: TransformerLM):
    return make_sampler(model, num_tokens=self.num_tokens, temperature=self.temperature,
                        top_k=self.top_k)
