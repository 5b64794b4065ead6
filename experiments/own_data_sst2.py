r"""Your own text dataset in the experiment file: SST-2 read straight from the GLUE TSVs, no TFDS.

  python launch.py --config=experiments/own_data_sst2.py --workdir=/tmp/own_data_sst2

`get_data(config)` returns the sentences and labels of each split; `tokenize(64)` in the op list
makes them word ids and a 0/1 input_mask (a whitespace-word vocabulary of the train split, saved
as WORKDIR/vocab.json), for the encoder classifier. Nothing under research/ knows this file
(docs/data.md#your-own-dataset). experiments/sst2_encoder.py, with its own module, adds length
buckets and word dropout on top. Presets: `:default`; `:smoke` a few steps, for tests.
"""

import csv
import os

import numpy as np

from research.config import base_config
from research.data.tfds_build import SHARED_DATA

TSV_DIR = os.path.join(SHARED_DATA, 'sst2')  # GLUE's train.tsv and dev.tsv (sentence, label).


def read_tsv(path: str) -> dict:
  with open(path, encoding='utf-8', newline='') as f:
    rows = list(csv.DictReader(f, delimiter='\t', quoting=csv.QUOTE_NONE))
  return {'sentence': np.array([r['sentence'].strip() for r in rows]),
          'label': np.array([int(r['label']) for r in rows], np.int32)}


def get_data(config):
  folder = config.data.manual_dir or TSV_DIR
  return {config.data.train_split: read_tsv(os.path.join(folder, 'train.tsv')),
          config.data.eval_split: read_tsv(os.path.join(folder, 'dev.tsv'))}


def get_config(preset: str = 'default'):
  c = base_config()
  c.num_train_steps = 3000
  c.batch_size = 64
  c.eval_batch_size = 872 // 8 * 8 + 8  # Dev in one batch.
  c.log_every_steps = 100
  c.eval_every_steps = 500
  c.checkpoint_every_steps = 1000

  c.model.name = 'transformer_encoder'
  c.model.num_layers = 2
  c.model.d_model = 128
  c.model.num_heads = 4
  c.model.d_ff = 512
  c.model.dropout_rate = 0.3
  c.model.use_bias = True

  c.data.name = 'sst2_tsv'  # A label for logs and the resume check.
  c.data.get_data = os.path.abspath(__file__)
  c.data.manual_dir = TSV_DIR
  c.data.train_split, c.data.eval_split = 'train', 'dev'
  c.data.inputs = 'sentence'
  c.data.targets = 'label'
  c.data.num_classes = 2
  c.data.preprocess = 'tokenize(64)'  # Words; the longest train/dev row has 52.
  c.data.vocab_min_count = 2  # Words seen once become [UNK] (which trains it).

  c.optimizer.learning_rate = 1e-3
  c.optimizer.warmup_steps = 300
  c.optimizer.weight_decay = 0.1
  c.optimizer.grad_clip_norm = 1.0

  if preset == 'smoke':
    c.num_train_steps = 10
    c.batch_size = 16
    c.eval_batch_size = 224
    c.log_every_steps = 5
    c.eval_every_steps = 10
    c.checkpoint_every_steps = 10
    c.progress_bar = False
    c.model.num_layers, c.model.d_model, c.model.num_heads, c.model.d_ff = 1, 32, 2, 64
    c.optimizer.warmup_steps = 2
    c.checkpoint.async_save = False
  elif preset != 'default':
    raise ValueError(f'Unknown preset {preset!r}; use :default or :smoke.')
  return c
