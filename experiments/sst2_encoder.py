r"""Transformer encoder classifier on GLUE SST-2 (binary sentiment), trained from scratch.

  python launch.py --config=experiments/sst2_encoder.py --workdir=/tmp/sst2 \
      --config.data.data_dir=/tmp/tfds

Fine-tuning the masked-LM pre-trained encoder of experiments/sst2_pretrain_mlm.py:

  python launch.py --config=experiments/sst2_encoder.py:finetune --workdir=/tmp/sst2_ft \
      --config.data.data_dir=/tmp/tfds --config.init_from=/tmp/sst2_mlm

Fine-tuning a Hugging Face BERT (BertForSequenceClassification: its WordPiece tokenizer, a pooler
and a new head; sizes from its config.json), by default shared/fixtures/hf/bert_tiny:

  python launch.py --config=experiments/sst2_encoder.py:hf --workdir=/tmp/sst2_bert \
      --config.data.data_dir=/tmp/tfds [--config.init_from=hf:PATH]

Results of both: docs/encoder.md#results. Presets: `:default` from scratch; `:finetune` the same
model from `config.init_from`; `:hf` from a Hugging Face BERT; `:tiny` a few seconds of training,
for tests (`:hf_tiny` the same from bert_tiny).
"""

import os

import ml_collections

from research.config import base_config
from research.data.tfds_build import default_manual_dir


def encoder_model(c: ml_collections.ConfigDict) -> None:
  """The encoder both SST-2 configs share (pre-training and fine-tuning need equal shapes)."""
  c.model.num_layers = 2
  c.model.d_model = 128
  c.model.num_heads = 4
  c.model.d_ff = 512
  c.model.dropout_rate = 0.3  # 0.1 overfits the phrases: dev loss rises after ~1000 steps.
  c.model.use_bias = True  # As BERT.
  # The rest is base_config's: [CLS] pooling, a position table of data.max_len + 1, pre-LayerNorm
  # blocks with GELU and learned positions.


def tiny_encoder(c: ml_collections.ConfigDict) -> None:
  """The :tiny presets' encoder (both files: a tiny pre-training run fine-tunes in the tests)."""
  c.model.num_layers = 1
  c.model.d_model = 32
  c.model.num_heads = 2
  c.model.d_ff = 64


def sst2_data(c: ml_collections.ConfigDict, objective: str) -> None:
  c.data.name = 'sst2'
  c.data.manual_dir = default_manual_dir('sst2') or ''
  c.data.train_split = 'train'
  c.data.eval_split = 'validation'  # GLUE dev; test labels are private.
  c.data.objective = objective  # classification | mlm
  c.data.max_len = 64  # Words; the longest train/dev row has 52.
  c.data.vocab_min_count = 2  # Words seen once become [UNK] (which trains it).
  c.data.length_buckets = (16, 32)  # Plus max_len: batches of one bucket, cut to its width.
  c.data.mask_rate = 0.15  # mlm only.
  c.data.word_dropout = 0.1  # classification only: share of train words replaced by [UNK].


def get_config(preset: str = 'default') -> ml_collections.ConfigDict:
  c = base_config()
  c.num_train_steps = 3000  # ~2.9 passes over the 67k train phrases at batch 64.
  c.batch_size = 64
  c.eval_batch_size = 872 // 8 * 8 + 8  # Dev in one batch (divides over 8 devices).
  c.log_every_steps = 100
  c.eval_every_steps = 500
  c.checkpoint_every_steps = 1000

  c.model.name = 'transformer_encoder'
  encoder_model(c)
  sst2_data(c, 'classification')

  c.optimizer.name = 'adamw'
  c.optimizer.learning_rate = 1e-3
  c.optimizer.schedule = 'warmup_cosine'
  c.optimizer.warmup_steps = 300
  c.optimizer.weight_decay = 0.1
  c.optimizer.grad_clip_norm = 1.0

  if preset == 'finetune':
    c.num_train_steps = 3000
    c.optimizer.learning_rate = 3e-4
    c.optimizer.warmup_steps = 100
  elif preset == 'tiny':
    c.num_train_steps = 160
    c.batch_size = 32
    c.eval_batch_size = 256
    c.log_every_steps = 40
    c.eval_every_steps = 160
    c.checkpoint_every_steps = 160
    c.progress_bar = False
    tiny_encoder(c)
    c.data.length_buckets = ()  # One shape: one compile.
    c.optimizer.learning_rate = 3e-3
    c.optimizer.warmup_steps = 10
    c.checkpoint.async_save = False
  elif preset in ('hf', 'hf_tiny'):
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    bert = os.path.normpath(os.path.join(repo, '..', 'shared', 'fixtures', 'hf', 'bert_tiny'))
    c.init_from = 'hf:' + bert  # Sizes, norms, GELU, [CLS] pooling and the pooler from it.
    c.eval_at_start = True
    c.model.dropout_rate = 0.1  # BERT's hidden_dropout_prob.
    c.data.word_dropout = 0.0  # WordPiece has few [UNK]s to train.
    c.data.max_len = 128  # WordPiece tokens with [CLS]/[SEP]: bert_tiny's whole position table.
    c.optimizer.learning_rate = 5e-4
    c.optimizer.warmup_steps = 100
    c.num_train_steps = 1000
    if preset == 'hf_tiny':
      c.num_train_steps = 20
      c.batch_size = 32
      c.log_every_steps = 10
      c.eval_every_steps = c.checkpoint_every_steps = 20
      c.progress_bar = False
      c.data.length_buckets = ()
      c.data.max_len = 64  # One short shape for tests (cuts 412 train, 21 dev sentences).
      c.optimizer.warmup_steps = 2
      c.checkpoint.async_save = False
  elif preset != 'default':
    raise ValueError(f'Unknown preset {preset!r}; use :default, :finetune, :hf, :hf_tiny or :tiny.')
  return c
