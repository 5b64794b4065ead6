r"""Masked-LM pre-training of the SST-2 encoder on the SST-2 train sentences (labels unused).

  python launch.py --config=experiments/sst2_pretrain_mlm.py --workdir=/tmp/sst2_mlm \
      --config.data.data_dir=/tmp/tfds

then fine-tune it on the labels (the classifier finds the encoder by name and shape, the vocabulary
in /tmp/sst2_mlm/vocab.json):

  python launch.py --config=experiments/sst2_encoder.py:finetune --workdir=/tmp/sst2_ft \
      --config.data.data_dir=/tmp/tfds --config.init_from=/tmp/sst2_mlm

Results of both: docs/encoder.md#results. BERT's recipe at toy scale: 15% of the words chosen,
80% -> [MASK], 10% random, 10% kept. Presets: `:default`; `:tiny` a few seconds, for tests.
"""

import ml_collections

from experiments.sst2_encoder import encoder_model, sst2_data, tiny_encoder
from research.config import base_config


def get_config(preset: str = 'default') -> ml_collections.ConfigDict:
  c = base_config()
  c.num_train_steps = 6000  # ~11 passes over the 67k train phrases at batch 128.
  c.batch_size = 128
  c.eval_batch_size = 880  # The 872 dev sentences (masked once, fixed) in one batch.
  c.log_every_steps = 200
  c.eval_every_steps = 1000
  c.checkpoint_every_steps = 2000

  c.model.name = 'transformer_encoder_mlm'
  encoder_model(c)
  c.model.dropout_rate = 0.1  # BERT's; the classifier's 0.3 fights phrase memorization instead.
  sst2_data(c, 'mlm')

  c.optimizer.name = 'adamw'
  c.optimizer.learning_rate = 1e-3
  c.optimizer.schedule = 'warmup_cosine'
  c.optimizer.warmup_steps = 500
  c.optimizer.weight_decay = 0.01
  c.optimizer.grad_clip_norm = 1.0

  c.checkpoint.best_metric = 'loss'
  c.checkpoint.best_mode = 'min'

  if preset == 'tiny':
    c.num_train_steps = 40
    c.batch_size = 32
    c.eval_batch_size = 256
    c.log_every_steps = 20
    c.eval_every_steps = 40
    c.checkpoint_every_steps = 40
    c.progress_bar = False
    tiny_encoder(c)
    c.data.length_buckets = ()  # One shape: one compile.
    c.optimizer.learning_rate = 3e-3
    c.optimizer.warmup_steps = 10
    c.checkpoint.async_save = False
  elif preset != 'default':
    raise ValueError(f'Unknown preset {preset!r}; use :default or :tiny.')
  return c
