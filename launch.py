r"""The one entry point.

  python launch.py --config=experiments/mnist_mlp.py --workdir=/tmp/mnist_mlp
  python launch.py --config=experiments/mnist_mlp.py:smoke --workdir=/tmp/m --config.seed=1

--mode picks what to do with the config and workdir (train by default).
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow only builds TFDS datasets here.

from research import host  # noqa: E402  (stdlib only: nothing has started a thread yet)

if __name__ == "__main__":
  host.reexec_with_malloc_tuning()  # glibc malloc that keeps freed memory; same pid and argv.

from absl import app, flags, logging
from ml_collections import config_flags

from research import console

config_flags.DEFINE_config_file('config', None, 'Experiment config file (FILE or FILE:PRESET).',
                                lock_config=True)
flags.DEFINE_string('workdir', None, 'Where checkpoints, metrics and logs go.')
flags.DEFINE_enum('mode', 'train', ['train', 'sweep', 'report', 'dryrun', 'sample', 'benchmark',
                                     'export'],
                  'What to do: train one run; sweep: run get_sweep() of the config file, one '
                  'run per point under WORKDIR/<point>; report: summarize a sweep in WORKDIR; '
                  'dryrun: compile the train step ahead of time and print per-device memory; '
                  'sample: print text from the latest checkpoint in WORKDIR (language models); '
                  'benchmark: compile time, steps/s, FLOPs, MFU, memory, input and loop overhead '
                  '(table on stdout, WORKDIR/benchmark.json); export: write WORKDIR/export/ '
                  'for inference (params, StableHLO programs, manifest; needs only --workdir).')
flags.DEFINE_string('checkpoint', 'latest', '--mode=export: latest, best (by '
                    'config.checkpoint.best_metric) or a step number.')
flags.DEFINE_enum('format', 'jax', ['jax', 'hf'], '--mode=export: jax (WORKDIR/export/: params '
                  'and jax.export programs) or hf (WORKDIR/export_hf/: a Hugging Face folder '
                  'that from_pretrained loads).')
flags.DEFINE_string('prompt', '\n', '--mode=sample: text to continue.')
flags.DEFINE_integer('num_tokens', 500, '--mode=sample: characters to generate.')
flags.DEFINE_float('temperature', 0.8, '--mode=sample: softmax temperature; 0 = greedy.')
flags.DEFINE_integer('top_k', 200, '--mode=sample: sample among the k likeliest; 0 = all.')
flags.DEFINE_integer('seed', 0, '--mode=sample: sampling seed.')
flags.DEFINE_bool('sweep', False, 'Short for --mode=sweep.')
flags.DEFINE_integer('parallel', 1, 'Sweep points run at once, as local processes '
                     '(--executor=local only).')
flags.DEFINE_enum('executor', 'local', ['local', 'slurm'], 'Sweep points as local processes, '
                  'or as SLURM batch jobs (sbatch; resources from the flags below and the '
                  "experiment's Sweep(slurm={...}); research/tools/slurm.py).")
flags.DEFINE_string('slurm_partition', None, '--executor=slurm: partition (default: SLURM\'s).')
flags.DEFINE_string('slurm_time', None, '--executor=slurm: time limit per job, e.g. 30 or 2:00:00.')
flags.DEFINE_integer('slurm_ntasks', None, '--executor=slurm: processes per point (default 1).')
flags.DEFINE_integer('slurm_cpus_per_task', None, '--executor=slurm: CPUs per process.')
flags.DEFINE_integer('slurm_gpus_per_task', None, '--executor=slurm: GPUs per process.')
flags.DEFINE_string('slurm_options', None, '--executor=slurm: more sbatch options, e.g. '
                    '"--qos=short --mem=8G".')
flags.DEFINE_enum('distributed', 'auto', ['auto', 'on', 'off'],
                  'Join a multi-process job (research/distributed.py): auto = when the three '
                  'flags below are given or SLURM / Cloud TPU / GKE is detected.')
flags.DEFINE_string('coordinator_address', None, 'HOST:PORT of process 0 (multi-process runs).')
flags.DEFINE_integer('num_processes', None, 'Processes in the job (multi-process runs).')
flags.DEFINE_integer('process_id', None, 'This process, in [0, num_processes).')
flags.DEFINE_integer('initialization_timeout', 300,
                     'Seconds to wait for the coordinator and every process to join.')
FLAGS = flags.FLAGS
def join_distributed_job() -> None:
  """Before any JAX computation: one global device list over all processes, if asked."""
  from research.runtime import distributed

  distributed.initialize(distributed.Request(
      FLAGS.distributed, FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id,
      FLAGS.initialization_timeout))


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  console.setup()
  from research.errors import ConfigError, RunError
  from research.runtime.heartbeat import exit_process, exit_with_error, in_distributed_job

  try:
    if FLAGS.sweep:
      if FLAGS.mode not in ('train', 'sweep'):
        raise ConfigError(f'--sweep conflicts with --mode={FLAGS.mode}.')
      FLAGS.mode = 'sweep'
    if (FLAGS.workdir is None and FLAGS.mode != 'dryrun') or (
        FLAGS.config is None and FLAGS.mode not in ('report', 'export')):
      raise ConfigError('--config and --workdir are required '
                        '(e.g. --config=experiments/mnist_mlp.py --workdir=/tmp/run); '
                        '--mode=report and --mode=export need only --workdir.')
    if FLAGS.executor != 'local' and FLAGS.mode != 'sweep':
      raise ConfigError(f'--executor={FLAGS.executor} applies to sweeps only (add --sweep).')
    if FLAGS.workdir is not None:  # Before anything writes there (a URI must have a backend).
      from research import paths

      paths.check(FLAGS.workdir, '--workdir')
    if FLAGS.mode in ('train', 'dryrun', 'benchmark'):
      join_distributed_job()
    if FLAGS.mode == 'train':
      from research.train import train_and_evaluate

      train_and_evaluate(FLAGS.config, FLAGS.workdir)
    elif FLAGS.mode == 'benchmark':
      from research.tools.benchmark import benchmark

      benchmark(FLAGS.config, FLAGS.workdir)
    elif FLAGS.mode == 'dryrun':
      from research.tools.dryrun import dryrun

      dryrun(FLAGS.config, FLAGS.workdir)
    elif FLAGS.mode == 'sweep':
      from research.tools.sweep_run import cli

      slurm_flags = {k: FLAGS[f'slurm_{k}'].value for k in
                     ('partition', 'time', 'ntasks', 'cpus_per_task', 'gpus_per_task', 'options')}
      sys.exit(cli(FLAGS['config'], FLAGS.workdir, FLAGS.parallel, FLAGS.executor, slurm_flags))
    elif FLAGS.mode == 'sample':
      from research.tools.sample import sample_from_workdir

      print(sample_from_workdir(FLAGS.config, FLAGS.workdir, prompt=FLAGS.prompt,
                                num_tokens=FLAGS.num_tokens, temperature=FLAGS.temperature,
                                top_k=FLAGS.top_k, seed=FLAGS.seed))
    elif FLAGS.mode == 'report':
      from research.tools.report import write_report

      write_report(FLAGS.workdir)
    elif FLAGS.mode == 'export' and FLAGS.format == 'hf':
      from research.tools.export_hf import export_hf, summary

      print(summary(export_hf(FLAGS.workdir, FLAGS.checkpoint)))
    elif FLAGS.mode == 'export':
      from research.tools.export import export_workdir, summary

      print(summary(export_workdir(FLAGS.workdir, FLAGS.checkpoint)))
  except ConfigError as e:
    logging.error('%s', e)
    print(f'error: {e}', file=sys.stderr)
    exit_process(2)
  except RunError as e:  # NaN/Inf, or a checkpoint that cannot be written or read.
    exit_with_error(e, e.exit_code)
  except Exception as e:  # In a multi-process job, name dead peers and never wait on them.
    if not in_distributed_job():
      raise
    exit_with_error(e, 1)


def parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing; a mistyped --config.KEY becomes one line with a suggestion (exit 2)."""
  try:
    return app.parse_flags_with_usage(argv)
  except (AttributeError, KeyError) as e:  # ml_collections' traceback for a key it lacks.
    print(f'error: {override_error(argv, e)}', file=sys.stderr)
    sys.exit(2)


def override_error(argv: list[str], error: Exception) -> str:
  """Names the --config.KEY override that matches no key, with the closest existing key."""
  import importlib.util

  from research.config_checks import get_dotted
  from research.errors import ConfigError

  spec = next((a.split('=', 1)[1] for a in argv if a.startswith('--config=')), '')
  try:  # The config as config_flags loads it: FILE[:PRESET] -> get_config(PRESET).
    path, _, preset = spec.partition(':')
    module = importlib.util.module_from_spec(importlib.util.spec_from_file_location('cfg', path))
    module.__spec__.loader.exec_module(module)
    config = module.get_config(preset) if preset else module.get_config()
  except Exception:  # noqa: BLE001 - fall back to ml_collections' own words.
    return f'bad config override: {error}'
  for arg in argv[1:]:
    if arg.startswith('--config.'):
      key = arg.split('=', 1)[0].removeprefix('--config.')
      try:
        get_dotted(config, key)
      except ConfigError as e:
        return f'--config.{key}: {e}'
  return f'bad config override: {error}'


if __name__ == '__main__':
  app.run(main, flags_parser=parse_flags)
