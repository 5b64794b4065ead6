r"""A character GPT on a text corpus from files, tokenized once into shards (docs/lm.md#corpora).

  python launch.py --config=experiments/lm_corpus.py --workdir=/tmp/lm_corpus

trains on ../shared/data/tiny_shakespeare/input.txt as a corpus (paragraphs are the documents,
the last 10% of the text is the eval split), reporting bits per byte beside the loss. Any text:

  python launch.py --config=experiments/lm_corpus.py --workdir=/tmp/my_lm \
      --config.data.corpus.train_files='/data/books/*.txt' \
      --config.data.tokenizer=sentencepiece   # '' = characters; or PATH.model, a tokenizer.json

Presets (FILE:PRESET):
  :cpu     the Tiny Shakespeare :cpu recipe (4 layers, d_model 128, block 64, batch 12, 2000 steps).
  :packed  :cpu with documents packed (segment ids, per-document positions, no loss across them).
  :4gb     the larger-than-RAM benchmark: 300 steps of :cpu on a >= 4 GB token corpus made by
           python -m research.tools.make_corpus --out=/tmp/corpus_4gb --train_bytes=2200000000
           (docs/lm.md#a-corpus-larger-than-ram-4-gb).
  :tiny    a few seconds of training, for tests.
"""

import ml_collections

from research.config import base_config
from research.data.tfds_build import default_manual_dir

SHAKESPEARE = default_manual_dir('tiny_shakespeare')


def get_config(preset: str = 'cpu') -> ml_collections.ConfigDict:
  c = base_config()
  c.num_train_steps = 2000
  c.batch_size = 12
  c.eval_batch_size = 128
  c.log_every_steps = 50
  c.eval_every_steps = 250
  c.checkpoint_every_steps = 500

  c.model.name = 'transformer_lm'
  c.model.num_layers = 4
  c.model.num_heads = 4
  c.model.d_model = 128
  c.model.max_len = 64

  c.data.name = 'lm_corpus'
  c.data.block_size = 64
  c.data.corpus.train_files = f'{SHAKESPEARE}/input.txt' if SHAKESPEARE else ''
  c.data.corpus.separator = '\n\n'  # Tiny Shakespeare's speeches.

  c.optimizer.name = 'adamw'  # As experiments/shakespeare_char.py.
  c.optimizer.learning_rate = 2e-3
  c.optimizer.schedule = 'warmup_cosine'
  c.optimizer.warmup_steps = 100
  c.optimizer.final_lr_ratio = 0.1
  c.optimizer.b2 = 0.99
  c.optimizer.weight_decay = 0.1
  c.optimizer.grad_clip_norm = 1.0

  c.checkpoint.best_metric = 'loss'
  c.checkpoint.best_mode = 'min'

  if preset == 'packed':
    c.data.packing = True
  elif preset == '4gb':
    c.num_train_steps = 300
    c.eval_every_steps = 300
    c.checkpoint_every_steps = 300
    c.progress_bar = False
    c.data.corpus.train_files = '/tmp/corpus_4gb/train-*.txt'
    c.data.corpus.eval_files = '/tmp/corpus_4gb/eval.txt'
  elif preset == 'tiny':
    c.num_train_steps = 20
    c.batch_size = 8
    c.eval_batch_size = 64
    c.log_every_steps = 10
    c.eval_every_steps = 10
    c.checkpoint_every_steps = 10
    c.progress_bar = False
    c.model.num_layers = 2
    c.model.num_heads = 2
    c.model.d_model = 32
    c.model.max_len = 32
    c.data.block_size = 32
    c.data.corpus.eval_fraction = 0.02  # 22k characters: a quick whole-split evaluation.
    c.optimizer.warmup_steps = 5
    c.checkpoint.async_save = False
  elif preset != 'cpu':
    raise ValueError(f'Unknown preset {preset!r}; use :cpu, :packed, :4gb or :tiny.')
  return c
