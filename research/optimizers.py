"""Optax optimizers and learning-rate schedules from `config.optimizer`."""

from __future__ import annotations

import jax
import ml_collections
import optax

from research.config_checks import ConfigError, check_choice

SCHEDULES = ['constant', 'cosine', 'warmup_cosine', 'linear']
OPTIMIZERS = ['adamw', 'sgd', 'adafactor', 'lion']


def make_schedule(opt: ml_collections.ConfigDict, num_train_steps: int) -> optax.Schedule:
  """Linear warmup over `warmup_steps` (any schedule), then the decay named by `schedule`.

  `warmup_cosine` is `cosine` by its common name; both decay to `final_lr_ratio * learning_rate`
  at `num_train_steps`, as does `linear`.
  """
  peak, warmup = opt.learning_rate, opt.warmup_steps
  final = opt.learning_rate * opt.final_lr_ratio
  decay_steps = max(num_train_steps - warmup, 1)
  if opt.schedule == 'constant':
    decay = optax.constant_schedule(peak)
  elif opt.schedule in ('cosine', 'warmup_cosine'):
    decay = optax.cosine_decay_schedule(peak, decay_steps, alpha=opt.final_lr_ratio)
  else:  # linear
    decay = optax.linear_schedule(peak, final, decay_steps)
  if warmup == 0:
    return decay
  return optax.join_schedules([optax.linear_schedule(0.0, peak, warmup), decay], [warmup])


def decay_mask(params) -> object:
  """Weight decay on matrices only: biases, norm scales and other vectors are left alone."""
  return jax.tree.map(lambda p: p.ndim >= 2, params)


def make_optimizer(opt: ml_collections.ConfigDict,
                   num_train_steps: int) -> tuple[optax.GradientTransformation, optax.Schedule]:
  wrapped = ml_collections.ConfigDict({'optimizer': opt})
  check_choice(wrapped, 'optimizer.name', OPTIMIZERS)
  check_choice(wrapped, 'optimizer.schedule', SCHEDULES)
  lr = make_schedule(opt, num_train_steps)
  wd = opt.weight_decay
  if opt.name == 'adamw':
    tx = optax.adamw(lr, b1=opt.b1, b2=opt.b2, eps=opt.eps, weight_decay=wd, mask=decay_mask)
  elif opt.name == 'sgd':
    tx = optax.chain(optax.add_decayed_weights(wd, mask=decay_mask),
                     optax.sgd(lr, momentum=opt.momentum or None, nesterov=opt.nesterov))
  elif opt.name == 'adafactor':
    tx = optax.adafactor(lr, weight_decay_rate=wd or None, weight_decay_mask=decay_mask)
  elif opt.name == 'lion':
    tx = optax.lion(lr, b1=opt.b1, b2=opt.b2, weight_decay=wd, mask=decay_mask)
  else:  # Unreachable after check_choice.
    raise ConfigError(opt.name)
  if opt.grad_clip_norm:
    tx = optax.chain(optax.clip_by_global_norm(opt.grad_clip_norm), tx)
  from research.transfer import partition_optimizer  # Frozen params, encoder lr multiplier.

  return partition_optimizer(tx, opt), lr
