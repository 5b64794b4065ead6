"""What a person sees in the terminal, and the full log kept in the workdir.

The terminal shows the progress bar, the preflight line, one short line per evaluation and any
warning (`warning: ...`) or error (`error: ...`); absl's INFO lines would cut through the bar, so
they go only to WORKDIR/log.txt (log.<process>.txt on other processes), with every warning too.
Lines logged before the workdir is known (the checks before any compute must not write into it)
are held in memory and written once the run has started.
"""

from __future__ import annotations

import logging
import logging.handlers

from absl import logging as absl_logging

from research import paths

# Libraries whose INFO lines are noise even in the log file (Orbax logs a dozen lines per save).
QUIET_LIBRARIES = ('/orbax/', '/tensorflow_datasets/', '/jax/_src/', '/etils/')
_buffer = logging.handlers.MemoryHandler(capacity=100_000, flushLevel=logging.CRITICAL + 1)


class _ConsoleFormatter(logging.Formatter):
  def format(self, record: logging.LogRecord) -> str:
    return f'{record.levelname.lower()}: {record.getMessage()}'


def _keep(record: logging.LogRecord) -> bool:
  return record.levelno >= logging.WARNING or not any(
      part in record.pathname for part in QUIET_LIBRARIES)


def setup() -> None:
  """Terminal: warnings only, marked; everything else (INFO up) kept for the log file."""
  handler = absl_logging.get_absl_handler()
  handler.addFilter(_keep)
  handler.setLevel(logging.WARNING)
  handler.setFormatter(_ConsoleFormatter())
  # ERROR lines are printed by whoever raises them (`error: ...` from launch.py) exactly once.
  handler.addFilter(lambda record: record.levelno < logging.ERROR)
  _buffer.setFormatter(absl_logging.PythonFormatter())
  _buffer.addFilter(_keep)
  logging.getLogger().addHandler(_buffer)
  absl_logging.set_verbosity(absl_logging.INFO)


def log_to_file(workdir: str, process_index: int = 0) -> str:
  """From now on (and for everything held so far) the full log goes to WORKDIR/log.txt."""
  name = 'log.txt' if process_index == 0 else f'log.{process_index}.txt'
  path = paths.join(workdir, name)
  if _buffer.target is None:
    target = (logging.FileHandler(path) if paths.is_local(path)
              else logging.StreamHandler(paths.Upload(path, binary=False)))
    target.setFormatter(absl_logging.PythonFormatter())
    _buffer.setTarget(target)
  _buffer.flush()
  _buffer.flushLevel = logging.DEBUG  # Written through from here on.
  return path


def show(message: str) -> None:
  """A line for the person at the terminal (and the log file), e.g. 'Resumed from step 40'."""
  print(message, flush=True)
  absl_logging.info('%s', message)


# How an evaluation reads on the console: (key, label, format); other keys stay in the files.
CONSOLE = (('loss', 'loss', '{:.4f}'), ('accuracy', 'acc', '{:.2%}'),
           ('bits_per_char', 'bits/char', '{:.4f}'), ('bits_per_token', 'bits/token', '{:.4f}'),
           ('bits_per_byte', 'bits/byte', '{:.4f}'),
           ('perplexity', 'ppl', '{:.2f}'),
           ('macro_f1', 'macro F1', '{:.4f}'))


def eval_line(step: int, scalars: dict) -> str:
  """`eval 150 | loss 0.3904 | acc 90.28% | macro F1 0.9012`: one short line per evaluation."""
  parts = [f'eval {step}'] + [f'{label} {fmt.format(scalars[k])}' for k, label, fmt in CONSOLE
                              if isinstance(scalars.get(k), float)]
  return ' | '.join(parts)
