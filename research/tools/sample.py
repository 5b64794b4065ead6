"""--mode=sample: text from a trained language model's newest checkpoint.

  python launch.py --config=experiments/shakespeare_char.py --workdir=/tmp/lm_cpu \
      --mode=sample --prompt=$'ROMEO:' --num_tokens=500

The generation itself (KV cache, sliding window, one compiled program) is research/models/decode.py;
the tokenizer and model meta come from the dataset's spec and the run's saved tokenizer.
"""

from __future__ import annotations

import time

import jax
import ml_collections
import numpy as np
from absl import logging

from research import build, checkpointing, data, hf, models, paths
from research.errors import ConfigError
from research.models.decode import check_sample_args, encode_prompt, make_sampler


def sample_from_workdir(config: ml_collections.ConfigDict, workdir: str, *, prompt: str,
                        num_tokens: int, temperature: float, top_k: int, seed: int) -> str:
  """The prompt and num_tokens sampled tokens (decoded) from WORKDIR's latest checkpoint."""
  check_sample_args(num_tokens, temperature, top_k)
  config = hf.configure(config, verbose=False)  # init_from=hf:PATH: the model training built.
  spec = data.get_spec(config, workdir)
  ckpt_dir = paths.join(workdir, 'checkpoints')  # A local folder or a URI (research/paths.py).
  if not checkpointing.complete_steps(ckpt_dir):
    raise ConfigError(f'No checkpoint in {ckpt_dir}: train first (--mode=train with this '
                      '--workdir), or point --workdir at a trained run.')
  tokenizer = spec.load_tokenizer(workdir)
  meta = spec.meta(config, tokenizer)
  if meta.task != 'lm':
    raise ConfigError(f'--mode=sample needs a language model; config.data.name={spec.name!r} '
                      f'trains a {meta.task!r} model.')
  prompt_1xP = encode_prompt(tokenizer, prompt)
  model = models.get_model(config.model, meta)
  example = {'inputs': np.zeros((1, meta.block_size), np.int32)}
  step, params = build.restore_params(config, workdir, model, example)
  rng = jax.random.key(seed)
  t0 = time.perf_counter()
  sampler = make_sampler(model, num_tokens=num_tokens, temperature=temperature, top_k=top_k)
  compiled = sampler.lower(params, prompt_1xP, rng).compile()
  t1 = time.perf_counter()
  tokens = jax.block_until_ready(compiled(params, prompt_1xP, rng))
  t2 = time.perf_counter()
  logging.info('Step %d checkpoint: sampled %d tokens in %.3fs after a %.2fs compile '
               '(%.0f tokens/s).', step, num_tokens, t2 - t1, t1 - t0, num_tokens / (t2 - t1))
  return prompt + tokenizer.decode(np.asarray(tokens)[0])
