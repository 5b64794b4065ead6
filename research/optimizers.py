"""Optax optimizers and learning-rate schedules from `config.optimizer`."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax

from research.config_checks import check_choice
from research.errors import ConfigError

HEAD = 'head'  # Top-level name of the task head: new when fine-tuning, full learning rate.
SCHEDULES = ['constant', 'cosine', 'warmup_cosine', 'linear']
OPTIMIZERS = ['adamw', 'sgd', 'adafactor', 'lion']

# Weight decay by a parameter's role, read from its name (the last path component), never from
# its rank: attention biases are (heads, head_dim) and `scan_layers` gives every parameter a
# layer axis. The convention is nanoGPT's and BERT's: the weights of matmuls (`kernel`,
# `*_kernel`) and the embedding tables (token `embedding`, `position_embed`, `cls_embed`) decay;
# biases (`bias`, `*_bias`) and norm scales (`scale`) do not. big_vision decays kernels only; we
# keep embeddings in so the LM recipes match nanoGPT, which decays wte and wpe.
DECAYED_ROLES = ('kernel', 'embedding', 'embed')
UNDECAYED_ROLES = ('bias', 'scale')
PyTree = Any


def _has_role(name: str, roles: tuple[str, ...]) -> bool:
  return any(name == r or name.endswith('_' + r) for r in roles)


def _leaf_name(path: tuple) -> str:
  key = path[-1]
  return str(getattr(key, 'key', getattr(key, 'name', getattr(key, 'idx', key))))


def is_decayed(path: tuple) -> bool | None:
  """Whether the parameter at `path` is weight-decayed; None if its name has no known role."""
  name = _leaf_name(path)
  if _has_role(name, DECAYED_ROLES):
    return True
  return False if _has_role(name, UNDECAYED_ROLES) else None


def make_decay_mask(strict: bool = True):
  """The `mask` for optax's weight decay: one bool per parameter (see DECAYED_ROLES).

  Works on boxed params (`tx.init` sees logical-axis boxes: a box gets one bool, so no
  MaskedNode ends up inside a box), on plain arrays, and on the MaskedNode-holed trees that
  `optax.multi_transform` (transfer.partition_optimizer) hands each group. `strict`: a parameter
  whose name has no known role is a ConfigError (at trace time, before any compute) rather than
  a silent guess.
  """
  is_box = lambda x: isinstance(x, nn.meta.AxisMetadata)  # noqa: E731

  def mask(params: PyTree) -> PyTree:
    unknown = []

    def decide(path, _):
      decayed = is_decayed(path)
      if decayed is None:
        unknown.append('/'.join(_leaf_name(path[:i + 1]) for i in range(len(path))))
      return bool(decayed)

    out = jax.tree_util.tree_map_with_path(decide, params, is_leaf=is_box)
    if unknown and strict:
      raise ConfigError(
          f'Weight decay: no rule for parameter(s) {unknown[:5]}. Name them *kernel / *embed / '
          '*embedding (decayed) or *bias / scale (not decayed), or add the role to '
          'research/optimizers.py DECAYED_ROLES / UNDECAYED_ROLES.')
    return out

  return mask


def schedule_length(opt: ml_collections.ConfigDict, num_train_steps: int) -> int:
  """The step where the decay ends: `optimizer.decay_steps`, or num_train_steps if 0/None.

  train.py makes decay_steps concrete when a run starts (resume_check.resolve_schedule), so a
  resumed or extended run keeps the schedule it started with.
  """
  steps = opt.get('decay_steps', 0)
  if steps is None:
    steps = 0
  if not isinstance(steps, int) or isinstance(steps, bool) or steps < 0:
    raise ConfigError(f'config.optimizer.decay_steps must be an integer >= 0 (0 = '
                      f'num_train_steps at the run\'s start), got {steps!r}.')
  return steps or num_train_steps


def warmup_schedule(peak: float, warmup: int) -> optax.Schedule:
  """peak * (step + 1) / warmup: the first update already moves (nanoGPT's `lr * (it+1) / warmup`),
  update `warmup` (step warmup - 1) is the first at the peak."""
  return lambda step: peak * jnp.minimum(step + 1, warmup) / warmup


def make_schedule(opt: ml_collections.ConfigDict, num_train_steps: int) -> optax.Schedule:
  """Linear warmup over `warmup_steps` (any schedule), then the decay named by `schedule`.

  `warmup_cosine` is `cosine` by its common name; both decay to `final_lr_ratio * learning_rate`
  at step `schedule_length` (decay_steps, else num_train_steps), as does `linear`; the LR stays
  there after it. The step is the optimizer's update count (see `applied_learning_rate`).
  """
  peak, warmup = opt.learning_rate, opt.warmup_steps
  final = opt.learning_rate * opt.final_lr_ratio
  decay_steps = max(schedule_length(opt, num_train_steps) - warmup, 1)
  if opt.schedule == 'constant':
    decay = optax.constant_schedule(peak)
  elif opt.schedule in ('cosine', 'warmup_cosine'):
    decay = optax.cosine_decay_schedule(peak, decay_steps, alpha=opt.final_lr_ratio)
  else:  # linear
    decay = optax.linear_schedule(peak, final, decay_steps)
  if warmup == 0:
    return decay
  return optax.join_schedules([warmup_schedule(peak, warmup), decay], [warmup])


def applied_learning_rate(schedule: optax.Schedule, opt_state: PyTree) -> jax.Array:
  """The learning rate the next `tx.update` applies: the schedule at the optimizer's own count.

  That count is the number of updates applied, not the train step: with nan_policy='skip' a
  skipped update keeps the old optimizer state, so it does not advance the schedule (as it does
  not advance Adam's bias correction); k skipped updates end the run k steps short of the
  schedule's end. Every ScaleByScheduleState (one per multi_transform group) holds the same count.
  """
  is_sched = lambda x: isinstance(x, optax.ScaleByScheduleState)  # noqa: E731
  counts = [s.count for s in jax.tree.leaves(opt_state, is_leaf=is_sched) if is_sched(s)]
  if not counts:
    raise ValueError('No ScaleByScheduleState in the optimizer state: the optimizer was not built '
                     'by research.optimizers.make_optimizer.')
  return schedule(counts[0])


def make_optimizer(opt: ml_collections.ConfigDict,
                   num_train_steps: int) -> tuple[optax.GradientTransformation, optax.Schedule]:
  wrapped = ml_collections.ConfigDict({'optimizer': opt})
  check_choice(wrapped, 'optimizer.name', OPTIMIZERS)
  check_choice(wrapped, 'optimizer.schedule', SCHEDULES)
  lr = make_schedule(opt, num_train_steps)
  wd = opt.weight_decay
  # Always masked (even at wd 0) so the optimizer state has one structure; unknown names only
  # matter when something is decayed.
  decay_mask = make_decay_mask(strict=bool(wd))
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
  return partition_optimizer(tx, opt), lr


def path_name(path: tuple) -> str:
  """A tree path as 'stack/block_0/attn/query_kernel' (dict keys or attribute names)."""
  return '/'.join(str(getattr(k, 'key', getattr(k, 'name', getattr(k, 'idx', k)))) for k in path)


# --- Frozen prefixes and a smaller encoder learning rate (fine-tuning) ------------------------
# Parameters under `config.optimizer.freeze` prefixes get no updates (`optax.set_to_zero`, so no
# weight decay either); `config.optimizer.encoder_lr_multiplier` scales the updates (= the learning
# rate, decay included) of every other parameter outside the task head (top-level `head`), through
# `optax.multi_transform` (each group has its own optimizer state, so `grad_clip_norm` clips encoder
# and head separately).


def _label_fn(freeze: tuple[str, ...]):
  def matches(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix.rstrip('/') + '/')

  def labels(params: PyTree) -> PyTree:
    # A logical-axis box is one leaf: the label replaces it whole, so optax's masking never puts
    # an empty MaskedNode inside a box (whose sharding would then have nothing to describe).
    is_box = lambda x: isinstance(x, nn.meta.AxisMetadata)  # noqa: E731
    names = [path_name(p) for p, _ in jax.tree_util.tree_leaves_with_path(params, is_leaf=is_box)]
    unused = [f for f in freeze if not any(matches(n, f) for n in names)]
    if unused:  # At tx.init, i.e. while the state is shaped, before any compute.
      raise ConfigError(f'config.optimizer.freeze: {unused} match no parameter. Top-level names: '
                        f'{sorted({n.split("/")[0] for n in names})}.')

    def label(path, _):
      name = path_name(path)
      if any(matches(name, f) for f in freeze):
        return 'frozen'
      return 'head' if name.split('/')[0] == HEAD else 'encoder'

    return jax.tree_util.tree_map_with_path(label, params, is_leaf=is_box)

  return labels


def partition_optimizer(tx: optax.GradientTransformation,
                        opt: ml_collections.ConfigDict) -> optax.GradientTransformation:
  """`tx`, or an `optax.multi_transform` for freeze / encoder_lr_multiplier (module doc)."""
  freeze = tuple(opt.get('freeze', ()) or ())
  multiplier = opt.get('encoder_lr_multiplier', 1.0)
  if isinstance(freeze, str) or not all(isinstance(f, str) and f for f in freeze):
    raise ConfigError(f'config.optimizer.freeze must be a tuple of parameter-path prefixes, e.g. '
                      f"('token_embed', 'stack'), got {freeze!r}.")
  if not isinstance(multiplier, (int, float)) or multiplier <= 0:
    raise ConfigError(f'config.optimizer.encoder_lr_multiplier must be > 0 (use optimizer.freeze '
                      f'to stop updates), got {multiplier!r}.')
  if not freeze and multiplier == 1.0:
    return tx
  encoder = tx if multiplier == 1.0 else optax.chain(tx, optax.scale(multiplier))
  return optax.multi_transform({'frozen': optax.set_to_zero(), 'encoder': encoder, 'head': tx},
                               _label_fn(freeze))
