"""Faults injected on purpose, for the reliability tests: `RESEARCH_FAULT_INJECTION=KIND@STEP`.

An environment variable, not a config key: it is a test harness, not an experiment setting, so it
never appears in a config, a config diff or a sweep. Unset (or '') = none. The runtime guards call
one hook per place a fault can strike, so the loop itself carries no test logic;
tests/integration/test_faults.py drives every kind.
"""

from __future__ import annotations

import dataclasses
import errno
import os
import signal
import time

import numpy as np

from research.errors import ConfigError

FAULTS = {
    'nan': 'the inputs of update STEP are NaN (the loss and gradients follow)',
    'sigterm': 'SIGTERM to this process right after update STEP',
    'sigint': 'SIGINT to this process right after update STEP',
    'sigkill': 'SIGKILL to this process right after update STEP',
    'hang': 'the loop sleeps forever after update STEP (for the watchdog)',
    'sigkill_in_save': 'SIGKILL while the checkpoint of step STEP is being written',
    'enospc_in_save': 'writing the checkpoint of step STEP fails with ENOSPC (disk full)',
}


ENV = 'RESEARCH_FAULT_INJECTION'


@dataclasses.dataclass(frozen=True)
class Fault:
  """`RESEARCH_FAULT_INJECTION=KIND@STEP` ('' = none), e.g. 'nan@7'. STEP counts updates from 1.

  Test-only hooks, kept here so the train loop has one call per hook and no test logic.
  """

  kind: str = ''
  step: int = -1

  @classmethod
  def parse(cls, spec: str) -> Fault:
    if not spec:
      return cls()
    kind, _, step = spec.partition('@')
    if kind not in FAULTS or not step.isdigit() or int(step) < 1:
      raise ConfigError(f'{ENV}={spec!r} must be KIND@STEP with STEP >= 1 and '
                        f'KIND one of {sorted(FAULTS)}, or "" for none.')
    return cls(kind, int(step))

  @classmethod
  def from_env(cls) -> Fault:
    return cls.parse(os.environ.get(ENV, ''))

  def poison(self, index: int, batch: dict) -> dict:
    """train_batch(index) feeds update index + 1."""
    if self.kind != 'nan' or index + 1 != self.step:
      return batch
    inputs = batch['inputs']
    if not np.issubdtype(inputs.dtype, np.floating):
      raise ConfigError(f'{ENV}=nan@STEP needs float model inputs (e.g. MNIST).')
    return dict(batch, inputs=np.full_like(inputs, np.nan))

  def after_step(self, step: int) -> None:
    if step != self.step:
      return
    if self.kind in ('sigterm', 'sigint', 'sigkill'):
      os.kill(os.getpid(), getattr(signal, self.kind.upper()))
    elif self.kind == 'hang':
      while True:
        time.sleep(3600)

  def before_save(self, step: int) -> None:
    """Arms a failure inside Orbax's (background) write of this step's data item."""
    if step != self.step or self.kind not in ('sigkill_in_save', 'enospc_in_save'):
      return
    from orbax.checkpoint._src.handlers import json_checkpoint_handler as handler

    kind, original = self.kind, handler.JsonCheckpointHandler._save_fn

    async def failing_save(self_, x, directory):
      handler.JsonCheckpointHandler._save_fn = original  # One failure only.
      if kind == 'sigkill_in_save':
        os.kill(os.getpid(), signal.SIGKILL)
      raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(directory))

    handler.JsonCheckpointHandler._save_fn = failing_save
