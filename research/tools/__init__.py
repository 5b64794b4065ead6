"""Tools beside the core: each reads a config or a workdir and uses the core, never the reverse.

  dryrun.py      --mode=dryrun: compile the step from shapes, per-device memory.
  benchmark.py   --mode=benchmark: compile time, step time, FLOPs (flops.py), MFU against the
                 peak (peak.py), profile (op_profile.py).
  sample.py      --mode=sample: text from a language model's checkpoint.
  export.py      --mode=export: params, StableHLO programs (export_programs.py), inference.py;
  export_hf.py   --mode=export --format=hf: a Hugging Face checkpoint folder (research/hf).
  sweep.py       grids of config overrides; sweep_run.py runs them (--mode=sweep).
  report.py      --mode=report: a sweep's table, statistics and plots (report_plots.py).
"""
