r"""Continue training a Hugging Face GPT-2 (shared/fixtures/hf/gpt2_tiny) on Tiny Shakespeare.

  python launch.py --config=experiments/gpt2_tiny_shakespeare.py --workdir=/tmp/gpt2_tiny \
      --config.data.data_dir=/tmp/tfds

`config.init_from=hf:PATH` sets config.model from the folder's config.json, tokenizes with its
tokenizer.json and loads model.safetensors (research/hf). The first evaluation (step 0, before any
update) is transformers' own loss on the same windows: the fixture's val_loss, 3.93495
(docs/hf.md). Presets: (none) 200 steps; :tiny 2 steps, for tests.
"""

import os

import ml_collections

from research.config import base_config
from research.data.tfds_build import default_manual_dir

FIXTURE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), '..', 'shared',
                       'fixtures', 'hf', 'gpt2_tiny')


def get_config(preset: str = '') -> ml_collections.ConfigDict:
  c = base_config()
  c.init_from = 'hf:' + os.path.normpath(FIXTURE)
  c.eval_at_start = True
  c.num_train_steps = 2 if preset == 'tiny' else 200
  c.batch_size = 8
  c.eval_batch_size = 64
  c.log_every_steps = 1 if preset == 'tiny' else 20
  c.eval_every_steps = c.checkpoint_every_steps = c.num_train_steps
  c.model.name = 'transformer_lm'  # Its sizes, norms and GELU come from config.json.
  c.model.dropout_rate = 0.0

  c.data.name = 'tiny_shakespeare'
  c.data.manual_dir = default_manual_dir('tiny_shakespeare') or ''
  c.data.train_split = 'train'
  c.data.eval_split = 'validation'
  # transformers' shifted loss over windows of 64 tokens of the split's first 20,000 characters.
  c.data.block_size = 63
  c.data.eval_windows = 'disjoint'
  c.data.eval_chars = 20_000

  c.optimizer.learning_rate = 3e-4
  c.optimizer.warmup_steps = 0
  c.checkpoint.best_metric = 'loss'
  c.checkpoint.best_mode = 'min'

  c.sample = ml_collections.ConfigDict()
  c.sample.prompt = 'ROMEO:\n'
  c.sample.num_tokens = 30
  c.sample.temperature = 0.0  # Greedy, as the fixture's greedy_ids.
  c.sample.top_k = 0
  c.sample.seed = 0
  return c
