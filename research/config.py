"""The config contract every experiment file starts from (see README, "Config keys").

Experiment files call `base_config()` and change what they need; every key exists here, so a
mistyped override fails with a suggestion instead of being silently added.
"""

from __future__ import annotations

import ml_collections


def base_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.num_train_steps = 1000
  c.batch_size = 128  # Global, over all devices and processes.
  c.eval_batch_size = 1000
  c.log_every_steps = 100
  c.eval_every_steps = 1000
  c.checkpoint_every_steps = 1000
  c.grad_accum_steps = 1  # Micro-batches per optimizer step (grads summed; batch_size is global).
  c.nan_policy = 'stop'  # 'stop': raise, keep the last good checkpoint. 'skip': drop the update.
  c.progress_bar = True
  c.step_timeout_s = 0.0  # Watchdog: no step/eval/save for this long -> stacks + exit 5. 0 = off.
  c.init_from = ''  # A run's workdir or checkpoint: start from its params (research/transfer.py).

  c.model = ml_collections.ConfigDict()
  c.model.name = 'mlp'
  c.model.dtype = 'float32'  # Compute dtype; params stay in param_dtype.
  c.model.param_dtype = 'float32'

  c.data = ml_collections.ConfigDict()
  c.data.name = 'mnist'
  c.data.data_dir = ''  # TFDS data dir; '' = $TFDS_DATA_DIR or ~/tensorflow_datasets.
  c.data.manual_dir = ''  # Source files for an offline build; '' = TFDS downloads them.
  c.data.train_split = 'train'
  c.data.eval_split = 'test'

  c.optimizer = ml_collections.ConfigDict()
  c.optimizer.name = 'adamw'  # adamw | sgd | adafactor | lion
  c.optimizer.learning_rate = 1e-3  # Peak.
  c.optimizer.schedule = 'warmup_cosine'  # constant | cosine | warmup_cosine | linear
  c.optimizer.warmup_steps = 0  # Linear from learning_rate / warmup_steps at the first update.
  c.optimizer.final_lr_ratio = 0.0  # Decay ends at learning_rate * final_lr_ratio.
  # Step where the decay ends (warmup included, as nanoGPT's lr_decay_iters); the LR stays final
  # after it. 0 = num_train_steps at the run's start; recorded, so extending a run keeps it.
  c.optimizer.decay_steps = 0
  # Decoupled; kernels and embedding tables only, never biases or norm scales (optimizers.py).
  c.optimizer.weight_decay = 0.0
  c.optimizer.grad_clip_norm = 0.0  # Global-norm clipping; 0 = off.
  c.optimizer.b1 = 0.9
  c.optimizer.b2 = 0.999
  c.optimizer.eps = 1e-8
  c.optimizer.momentum = 0.9  # sgd only.
  c.optimizer.nesterov = False  # sgd only.
  c.optimizer.freeze = ()  # Param-path prefixes kept fixed, e.g. ('token_embed', 'stack').
  c.optimizer.encoder_lr_multiplier = 1.0  # Scales the lr of every param outside 'head'.

  c.parallel = ml_collections.ConfigDict()
  c.parallel.strategy = 'jit'  # jit (Mesh + NamedSharding) | pmap
  c.parallel.data = -1  # Mesh axis sizes; -1 = the remaining devices.
  c.parallel.fsdp = 1
  c.parallel.tensor = 1

  c.wandb = ml_collections.ConfigDict()  # Weights & Biases, optional (research/wandb_log.py).
  c.wandb.project = ''  # '' = off. metrics.jsonl and TensorBoard are always written.
  c.wandb.entity = ''
  c.wandb.group = ''  # Sweeps set it to the sweep folder's name.
  c.wandb.mode = ''  # '' = wandb's default (WANDB_MODE or online) | online | offline | disabled

  c.checkpoint = ml_collections.ConfigDict()
  c.checkpoint.keep = 2  # Newest N steps kept, plus the best by best_metric.
  c.checkpoint.best_metric = 'accuracy'  # An eval metric name; '' = none.
  c.checkpoint.best_mode = 'max'  # max | min
  c.checkpoint.async_save = True

  c.benchmark = ml_collections.ConfigDict()  # --mode=benchmark (research/benchmark.py).
  c.benchmark.warmup_steps = 3  # Untimed steps after compiling (caches, allocator, autotuning).
  c.benchmark.timed_steps = 20
  c.benchmark.peak_flops = 0.0  # Per-device peak FLOP/s for MFU; 0 = the device table (GPU/TPU)
  #                               or a matmul measured in the same run (CPU).
  c.benchmark.loop_log_intervals = 4  # Full-loop timing: log intervals after the first; 0 = skip.
  c.benchmark.profile_steps = 0  # > 0: trace this many steps, print time by op kind.
  return c
