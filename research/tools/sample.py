"""Text generation from a TransformerLM with a KV cache, as ONE compiled program.

`generate` prefills the cache with the prompt, then a `lax.scan` decodes one token per step, all
at fixed shapes. Past `max_len` positions (the position table / cache size) the context slides as
in nanoGPT, in chunks: when the cache is full it is rebuilt from the last `keep` tokens (one
prefill every max_len - keep tokens), so each token sees between `keep` and `max_len` tokens of
context, exactly what an uncached model given that same window would see.
"""

from __future__ import annotations

import functools
import os
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from research import build, models
from research.data.shakespeare import VOCAB_FILE, CharVocab
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


def encode_prompt(vocab: CharVocab, prompt: str) -> np.ndarray:
  if not prompt:
    raise ConfigError('The prompt is empty; give at least one character (e.g. a newline).')
  return vocab.encode(prompt, 'prompt')[None]


def make_eval_hook(vocab: CharVocab, sample: ml_collections.ConfigDict):
  """A train-loop eval hook: one sample per eval, to TensorBoard text and WORKDIR/samples.txt."""
  check_sample_args(sample.num_tokens, sample.temperature, sample.top_k)
  prompt_1xP = encode_prompt(vocab, sample.prompt)  # Bad prompts fail before training starts.
  compiled = {}

  def hook(step: int, params, model: TransformerLM, workdir: str, writer) -> None:
    if not compiled:
      compiled['fn'] = make_sampler(model, num_tokens=sample.num_tokens,
                                    temperature=sample.temperature, top_k=sample.top_k)
      compiled['shapes'] = jax.eval_shape(
          lambda: model.init(jax.random.key(0), prompt_1xP[:, :1], train=False))['params']
    # pmap keeps one copy of the params per device (a leading axis): sample with the first.
    params = jax.tree.map(lambda x, s: x[0] if x.ndim == s.ndim + 1 else x, params,
                          nn.unbox(compiled['shapes']))
    tokens = compiled['fn'](params, prompt_1xP, jax.random.key(sample.seed))
    text = sample.prompt + vocab.decode(np.asarray(jax.device_get(tokens))[0])
    writer.write_text(step, 'sample', '\n'.join('    ' + line for line in text.split('\n')))
    if jax.process_index() == 0:
      with open(os.path.join(workdir, 'samples.txt'), 'a') as f:
        f.write(f'--- step {step} ---\n{text}\n')

  return hook


def restore_params(config: ml_collections.ConfigDict, workdir: str, model: TransformerLM,
                   block_size: int):
  """(step, params) of the newest checkpoint in WORKDIR that restores into this config's state."""
  example = {'inputs': np.zeros((1, block_size), np.int32)}
  return build.restore_params(config, workdir, model, example)


def sample_from_workdir(config: ml_collections.ConfigDict, workdir: str, *, prompt: str,
                        num_tokens: int, temperature: float, top_k: int, seed: int) -> str:
  """The prompt and num_tokens sampled characters from WORKDIR's latest checkpoint."""
  check_sample_args(num_tokens, temperature, top_k)
  ckpt_dir = os.path.join(workdir, 'checkpoints')
  steps = [d for d in os.listdir(ckpt_dir) if d.isdigit()] if os.path.isdir(ckpt_dir) else []
  if not steps:
    raise ConfigError(f'No checkpoint in {ckpt_dir}: train first (--mode=train with this '
                      '--workdir), or point --workdir at a trained run.')
  vocab_path = os.path.join(workdir, VOCAB_FILE)
  if not os.path.exists(vocab_path):
    raise ConfigError(f'{vocab_path} is missing: sampling needs the vocabulary saved by training.')
  vocab = CharVocab.load(vocab_path)
  prompt_1xP = encode_prompt(vocab, prompt)
  block_size = config.data.block_size
  model = models.get_model(config.model, {'task': 'lm', 'vocab_size': len(vocab),
                                          'block_size': block_size})
  step, params = restore_params(config, workdir, model, block_size)
  rng = jax.random.key(seed)
  t0 = time.perf_counter()
  sampler = make_sampler(model, num_tokens=num_tokens, temperature=temperature, top_k=top_k)
  compiled = sampler.lower(params, prompt_1xP, rng).compile()
  t1 = time.perf_counter()
  tokens = jax.block_until_ready(compiled(params, prompt_1xP, rng))
  t2 = time.perf_counter()
  logging.info('Step %d checkpoint: sampled %d tokens in %.3fs after a %.2fs compile '
               '(%.0f tokens/s).', step, num_tokens, t2 - t1, t1 - t0, num_tokens / (t2 - t1))
  return prompt + vocab.decode(np.asarray(tokens)[0])
