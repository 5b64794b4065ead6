r"""The one entry point.

  python launch.py --config=experiments/mnist_mlp.py --workdir=/tmp/mnist_mlp
  python launch.py --config=experiments/mnist_mlp.py:smoke --workdir=/tmp/m --config.seed=1

--mode picks what to do with the config and workdir (train by default).
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow only builds TFDS datasets here.

from absl import app, flags, logging
from ml_collections import config_flags

config_flags.DEFINE_config_file('config', None, 'Experiment config file (FILE or FILE:PRESET).',
                                lock_config=True)
flags.DEFINE_string('workdir', None, 'Where checkpoints, metrics and logs go.')
flags.DEFINE_enum('mode', 'train', ['train'], 'What to do.')
FLAGS = flags.FLAGS
QUIET_LIBRARIES = ('/orbax/', '/tensorflow_datasets/', '/jax/_src/', '/etils/')


def quiet_library_info_logs() -> None:
  """Keeps our INFO lines and drops the libraries' (Orbax logs a dozen lines per save)."""

  def keep(record) -> bool:
    return record.levelno >= logging.WARNING or not any(
        part in record.pathname for part in QUIET_LIBRARIES)

  logging.get_absl_logger().addFilter(keep)


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  quiet_library_info_logs()
  from research.config_checks import ConfigError

  try:
    if FLAGS.config is None or FLAGS.workdir is None:
      raise ConfigError('--config and --workdir are required '
                        '(e.g. --config=experiments/mnist_mlp.py --workdir=/tmp/run).')
    if FLAGS.mode == 'train':
      from research.train import train_and_evaluate

      train_and_evaluate(FLAGS.config, FLAGS.workdir)
  except ConfigError as e:
    logging.error('%s', e)
    print(f'error: {e}', file=sys.stderr)
    sys.exit(2)


if __name__ == '__main__':
  app.run(main)
