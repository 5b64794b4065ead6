r"""GPT-2 small's shape (12 layers, 12 heads, d_model 768, 1024 context), on Tiny Shakespeare.

With the 65-character vocabulary it has 85M parameters (GPT-2 small's 124M less 38M of its
50,257-token embedding). It is here for speed figures (README, "Performance"), on an accelerator:

  python launch.py --config=experiments/gpt2_small.py --workdir=/tmp/gpt2s --mode=benchmark \
      --config.model.attention_impl=cudnn

and on a CPU with a small batch and a few steps:

  python launch.py --config=experiments/gpt2_small.py --workdir=/tmp/gpt2s --mode=benchmark \
      --config.batch_size=1 --config.model.dtype=float32 --config.benchmark.warmup_steps=1 \
      --config.benchmark.timed_steps=3 --config.benchmark.loop_log_intervals=0

Everything else (data, optimizer, samples) is shakespeare_char.py's :gpu recipe, with nanoGPT's
GPT-2 optimizer settings (peak 6e-4, b2 0.95, no dropout).
"""

import importlib.util
import os

import ml_collections


def _shakespeare_char():
  path = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'shakespeare_char.py')
  spec = importlib.util.spec_from_file_location('shakespeare_char', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def get_config(preset: str = 'default') -> ml_collections.ConfigDict:
  if preset != 'default':
    raise ValueError(f'Unknown preset {preset!r}; use :default (flags change the batch or dtype).')
  c = _shakespeare_char().get_config('gpu')
  c.batch_size = 8
  c.eval_batch_size = 8  # 55 windows of 1024 in the validation split.
  c.model.num_layers = 12
  c.model.num_heads = 12
  c.model.d_model = 768
  c.model.max_len = 1024
  c.model.dropout_rate = 0.0
  # Unrolled: on the 2-core CPU the scanned stack took 11% more CPU time per step and compiled no
  # faster (README, "Performance"); --config.model.scan_layers=True compiles one layer body.
  c.model.scan_layers = False
  c.data.block_size = 1024
  c.optimizer.learning_rate = 6e-4
  c.optimizer.b2 = 0.95
  c.optimizer.warmup_steps = 200
  return c
