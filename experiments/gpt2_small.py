r"""GPT-2 small's shape (12 layers, 12 heads, d_model 768, 1024 context), on Tiny Shakespeare.

For speed figures, on an accelerator:

  python launch.py --config=experiments/gpt2_small.py --workdir=/tmp/gpt2s --mode=benchmark \
      --config.model.attention_impl=cudnn

and on a CPU with a small batch and a few steps:

  python launch.py --config=experiments/gpt2_small.py --workdir=/tmp/gpt2s --mode=benchmark \
      --config.batch_size=1 --config.model.dtype=float32 --config.benchmark.warmup_steps=1 \
      --config.benchmark.timed_steps=3 --config.benchmark.loop_log_intervals=0

Results, and its parameter count with the 65-character vocabulary:
docs/performance.md#measured-2-core-cpu-shared. Everything else (data, optimizer, samples) is
shakespeare_char.py's :gpu recipe, with nanoGPT's GPT-2 optimizer settings (peak 6e-4, b2 0.95,
no dropout).
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
  # Unrolled (the default): on a CPU the scanned stack took more CPU time per step and compiled
  # no faster (docs/performance.md#speed-switches-compared); --config.model.scan_layers=True
  # compiles one layer body.
  c.data.block_size = 1024
  c.optimizer.learning_rate = 6e-4
  c.optimizer.b2 = 0.95
  c.optimizer.warmup_steps = 200
  return c
