"""Sweep report: per-setting statistics over seeds, tests against the baseline, plots, HParams.

  python launch.py --mode=report --workdir=DIR

Reads DIR/sweep.json (or, without one, every DIR/<run>/metrics.jsonl, with settings inferred from
where the runs' config.json differ) and writes DIR/report.md, DIR/report.csv, DIR/curves_*.png and
DIR/hparams (TensorBoard HParams). Statistics use the per-seed final (and best) eval values:
mean, sample std, n and a 95% t-interval; for each setting against the baseline, Welch's t-test,
its p adjusted for the number of settings compared (Holm-Bonferroni, per metric) and Hedges' g.
"""

from __future__ import annotations

import csv
import dataclasses
import math
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
from absl import logging
from scipy import stats

from research.tools import report_plots
from research.tools import sweep as sweep_lib
from research.tools.report_runs import Run, best_value, final_value, load_runs, lower_is_better

ALPHA = 0.05


@dataclasses.dataclass
class Stat:
  n: int
  mean: float
  std: float
  ci_low: float
  ci_high: float


# --- Statistics --------------------------------------------------------------------------------


def describe(values: Sequence[float]) -> Stat:
  """Mean, sample std (ddof=1) and the 95% t-interval of the mean (nan where n < 2)."""
  x = np.asarray([v for v in values if math.isfinite(v)], dtype=np.float64)
  n = len(x)
  if n == 0:
    return Stat(0, math.nan, math.nan, math.nan, math.nan)
  mean = float(x.mean())
  if n < 2:
    return Stat(1, mean, math.nan, math.nan, math.nan)
  std = float(x.std(ddof=1))
  half = float(stats.t.ppf(1 - ALPHA / 2, n - 1)) * std / math.sqrt(n)
  return Stat(n, mean, std, mean - half, mean + half)


def welch_p(a: Sequence[float], b: Sequence[float]) -> float:
  """Two-sided p of Welch's t-test (unequal variances); nan where it is undefined."""
  a = [v for v in a if math.isfinite(v)]
  b = [v for v in b if math.isfinite(v)]
  if len(a) < 2 or len(b) < 2:
    return math.nan
  if np.std(a) == 0 and np.std(b) == 0:  # No seed noise at all: equal means or certain.
    return 1.0 if np.mean(a) == np.mean(b) else 0.0
  return float(stats.ttest_ind(a, b, equal_var=False).pvalue)


def holm(p_values: Sequence[float]) -> list[float]:
  """Holm-Bonferroni adjusted p-values, in the input order (nan stays nan and is not counted).

  With the m finite p sorted ascending, p_(1) <= ... <= p_(m), the i-th adjusted value is
  max over j <= i of min(1, (m - j + 1) p_(j)). Rejecting where it is < alpha keeps the chance of
  any false "beyond noise" among the m comparisons at most alpha, under any dependence.
  """
  finite = sorted((p, i) for i, p in enumerate(p_values) if math.isfinite(p))
  out = [math.nan] * len(p_values)
  running = 0.0
  for rank, (p, i) in enumerate(finite):
    running = max(running, min(1.0, (len(finite) - rank) * p))
    out[i] = running
  return out


def hedges_g(a: Sequence[float], b: Sequence[float]) -> float:
  """Hedges' g of a against b: (mean a - mean b) / pooled sample std, times the small-sample
  correction J = Gamma(v/2) / (sqrt(v/2) Gamma((v-1)/2)), v = n_a + n_b - 2 (J = 0.80 at 3 seeds
  each, 0.56 at 2). nan with fewer than 2 values in either; +-inf if neither varies at all."""
  a = np.asarray([v for v in a if math.isfinite(v)], dtype=np.float64)
  b = np.asarray([v for v in b if math.isfinite(v)], dtype=np.float64)
  if len(a) < 2 or len(b) < 2:
    return math.nan
  dof = len(a) + len(b) - 2
  pooled = math.sqrt(((len(a) - 1) * a.var(ddof=1) + (len(b) - 1) * b.var(ddof=1)) / dof)
  delta = float(a.mean() - b.mean())
  if pooled == 0:
    return 0.0 if delta == 0 else math.copysign(math.inf, delta)
  j = math.exp(math.lgamma(dof / 2) - math.lgamma((dof - 1) / 2)) / math.sqrt(dof / 2)
  return j * delta / pooled


def primary_metric(runs: Sequence[Run], metrics: Sequence[str]) -> str:
  """The config's checkpoint.best_metric if it is logged, else loss: what "best" means."""
  for run in runs:
    name = run.config.get('checkpoint', {}).get('best_metric')
    if name in metrics:
      return name
  return 'loss' if 'loss' in metrics else metrics[0]


def setting_table(runs: Sequence[Run], metrics: Sequence[str], baseline: str) -> list[dict]:
  """One row per (metric, setting): final and best over seeds, and the tests vs the baseline.

  "Beyond seed noise" uses the Holm-adjusted p; the family is the settings compared with the
  baseline on that metric (not across metrics: loss, perplexity and bits are one quantity).
  """
  done = [r for r in runs if r.status == 'done']
  settings = list(dict.fromkeys(r.setting for r in runs))  # Also those with no finished run.
  rows = []
  for metric in metrics:
    finals = {s: [final_value(r.evals.get(metric, {})) for r in done if r.setting == s]
              for s in settings}
    bests = {s: [best_value(r.evals.get(metric, {}), metric) for r in done if r.setting == s]
             for s in settings}
    base = finals.get(baseline, [])
    p_raw = [math.nan if s == baseline else welch_p(finals[s], base) for s in settings]
    for s, p, p_holm in zip(settings, p_raw, holm(p_raw), strict=True):
      final, best = describe(finals[s]), describe(bests[s])
      delta = final.mean - describe(base).mean if base else math.nan
      better = delta < 0 if lower_is_better(metric) else delta > 0
      rows.append({'metric': metric, 'setting': s, 'final': final, 'best': best,
                   'delta': delta, 'p': p, 'p_holm': p_holm,
                   'g': math.nan if s == baseline else hedges_g(finals[s], base),
                   'beyond_noise': bool(p_holm < ALPHA), 'better': better,
                   'is_baseline': s == baseline, 'baseline_n': describe(base).n,
                   'overrides': next(r.overrides for r in runs if r.setting == s)})
  return rows


def best_setting(rows: Sequence[dict], metric: str) -> str | None:
  candidates = [r for r in rows if r['metric'] == metric and math.isfinite(r['final'].mean)]
  if not candidates:
    return None
  sign = 1 if lower_is_better(metric) else -1
  return min(candidates, key=lambda r: sign * r['final'].mean)['setting']


# --- Output ------------------------------------------------------------------------------------


def _fmt(x: float, digits: int = 4) -> str:
  return '–' if x is None or not math.isfinite(x) else f'{x:.{digits}f}'


def _fmt_p(p: float) -> str:
  return '–' if not math.isfinite(p) else f'{p:.3g}'


def _fmt_g(g: float) -> str:
  if math.isinf(g):
    return '∞' if g > 0 else '-∞'
  return _fmt(g, 2)


def _label(overrides: dict[str, Any]) -> str:
  setting = sweep_lib.setting_of(overrides)
  short = sweep_lib.short_keys(list(setting))  # The same short names as the folders.
  return ', '.join(f'{short[k]}={v}' for k, v in setting.items()) or '(base config)'


def write_csv(path: str, rows: Sequence[dict], best: dict[str, str | None]) -> None:
  fields = ['metric', 'direction', 'setting', 'label', 'n', 'final_mean', 'final_std',
            'final_ci95_low', 'final_ci95_high', 'best_mean', 'best_std', 'best_ci95_low',
            'best_ci95_high', 'delta_final_vs_baseline', 'hedges_g_vs_baseline',
            'p_welch_vs_baseline', 'p_holm_vs_baseline', 'beyond_seed_noise', 'is_baseline',
            'is_best']
  with open(path, 'w', newline='') as f:
    writer = csv.DictWriter(f, fieldnames=fields)
    writer.writeheader()
    for r in rows:
      fi, be = r['final'], r['best']
      writer.writerow({
          'metric': r['metric'], 'setting': r['setting'], 'label': _label(r['overrides']),
          'direction': 'min' if lower_is_better(r['metric']) else 'max', 'n': fi.n,
          'final_mean': fi.mean, 'final_std': fi.std, 'final_ci95_low': fi.ci_low,
          'final_ci95_high': fi.ci_high, 'best_mean': be.mean, 'best_std': be.std,
          'best_ci95_low': be.ci_low, 'best_ci95_high': be.ci_high,
          'delta_final_vs_baseline': r['delta'], 'hedges_g_vs_baseline': r['g'],
          'p_welch_vs_baseline': r['p'], 'p_holm_vs_baseline': r['p_holm'],
          'beyond_seed_noise': '' if r['is_baseline'] or not math.isfinite(r['p_holm'])
          else r['beyond_noise'],
          'is_baseline': r['is_baseline'], 'is_best': best.get(r['metric']) == r['setting']})


def _verdict(r: dict) -> str:
  if r['is_baseline']:
    return 'baseline'
  if r['final'].n < 2:
    return 'n/a (n < 2)'
  if r['baseline_n'] < 2:
    return 'n/a (baseline n < 2)'
  if not math.isfinite(r['p_holm']):
    return 'n/a'
  if not r['beyond_noise']:
    return 'no'
  return 'yes, better' if r['better'] else 'yes, worse'


def metric_section(rows: Sequence[dict], metric: str, best: str | None) -> list[str]:
  direction = 'lower' if lower_is_better(metric) else 'higher'
  lines = [f'### {metric} ({direction} is better)', '',
           '| setting | n | final: mean ± std | final: 95% CI | best: mean ± std | '
           "Δ final vs baseline | Hedges' g | p (Welch) | p (Holm) | beyond seed noise? |",
           '|---|---|---|---|---|---|---|---|---|---|']
  for r in (r for r in rows if r['metric'] == metric):
    fi, be = r['final'], r['best']
    mark = ' ★' if r['setting'] == best else ''
    lines.append(
        f'| {_label(r["overrides"])}{mark} | {fi.n} | {_fmt(fi.mean)} ± {_fmt(fi.std)} | '
        f'[{_fmt(fi.ci_low)}, {_fmt(fi.ci_high)}] | {_fmt(be.mean)} ± {_fmt(be.std)} | '
        f'{"–" if r["is_baseline"] else _fmt(r["delta"])} | '
        f'{"–" if r["is_baseline"] else _fmt_g(r["g"])} | '
        f'{"–" if r["is_baseline"] else _fmt_p(r["p"])} | '
        f'{"–" if r["is_baseline"] else _fmt_p(r["p_holm"])} | {_verdict(r)} |')
  return lines + ['']


def points_section(runs: Sequence[Run], metric: str) -> list[str]:
  lines = ['## Points', '', f'| point | status | last eval step | final {metric} |',
           '|---|---|---|---|']
  for r in runs:
    series = r.evals.get(metric, {})
    lines.append(f'| `{r.name}` | {r.status} | {max(series) if series else "–"} | '
                 f'{_fmt(final_value(series))} |')
  return lines + ['']


def write_markdown(path: str, runs: Sequence[Run], meta: dict, rows: Sequence[dict],
                   metrics: Sequence[str], primary: str, best: dict[str, str | None],
                   plots: Sequence[str]) -> None:
  done = [r for r in runs if r.status == 'done']
  failed = [r for r in runs if r.status == 'failed']
  incomplete = [r for r in runs if r.status == 'incomplete']
  label = {r.setting: _label(r.overrides) for r in runs}
  shared = ' '.join(f'--config.{k}={sweep_lib.flag_value(v)}' for k, v in meta['shared'].items())
  lines = [f'# Sweep report: {os.path.basename(os.path.abspath(os.path.dirname(path)))}', '',
           f'- Config: `{meta["config"]}`' + (f' with `{shared}`' if shared else ''),
           f'- Points: {len(runs)} ({len(done)} done, {len(failed)} failed, '
           f'{len(incomplete)} incomplete); settings: {len({r.setting for r in runs})}',
           f'- Baseline: **{label.get(meta["baseline"], meta["baseline"])}**',
           f'- Primary metric: **{primary}** ({"lower" if lower_is_better(primary) else "higher"}'
           ' is better)']
  top = best.get(primary)
  if top is not None:
    row = next(r for r in rows if r['metric'] == primary and r['setting'] == top)
    lines.append(f'- Best setting (★): **{label[top]}**, final {primary} '
                 f'{_fmt(row["final"].mean)} ± {_fmt(row["final"].std)} (n={row["final"].n})'
                 + ('' if row['is_baseline'] else
                    f'; vs baseline: g={_fmt_g(row["g"])}, p={_fmt_p(row["p"])}, Holm '
                    f'p={_fmt_p(row["p_holm"])}, beyond seed noise: {_verdict(row)}'
                    if math.isfinite(row['p']) else f'; vs baseline: {_verdict(row)}'))
  lines += ['', 'Each row groups one setting over its seeds: mean ± sample std (n-1), n, and the '
            '95% confidence interval of the mean (t-distribution, n-1 degrees of freedom). '
            '"Final" is the last eval of each run; "best" the best eval over its steps. Each '
            "setting's final values are compared with the baseline's by Welch's t-test (two-sided,"
            ' unequal variances). "p (Holm)" is that p adjusted by Holm-Bonferroni for the number'
            ' of settings compared on the metric, and "beyond seed noise" means p (Holm) < '
            f'{ALPHA}: the chance of any false "yes" in a table (family-wise) is at most {ALPHA}. '
            "Hedges' g is the difference of the means over the pooled sample std, times the "
            'small-sample correction J = Γ(ν/2) / (√(ν/2) Γ((ν-1)/2)), ν = n + n_baseline - 2; '
            'its sign is that of Δ (about 0.2 is small, 0.8 large; with few seeds g itself is '
            'uncertain).', '',
            '## Results', '']
  for metric in [primary] + [m for m in metrics if m != primary]:
    lines += metric_section(rows, metric, best.get(metric))
  if failed or incomplete:
    lines += ['## Failed and incomplete points', '', '| point | status | error |', '|---|---|---|']
    lines += [f'| `{r.name}` | {r.status} | {(r.error or "").replace("|", "/")} |'
              for r in failed + incomplete]
    lines.append('')
  lines += points_section(runs, primary)
  if plots:
    lines += ['## Learning curves', '', 'Mean over seeds; the shaded band is ± one std.', '']
    lines += [f'![{os.path.basename(p)}]({os.path.basename(p)})' for p in plots]
    lines.append('')
  lines += ['TensorBoard (per-point curves and the HParams tab): '
            f'`tensorboard --logdir {os.path.dirname(path)}`', '']
  with open(path, 'w') as f:
    f.write('\n'.join(lines))


def write_report(workdir: str) -> dict:
  """Writes report.md, report.csv, curves_*.png and hparams/ into WORKDIR; returns the rows."""
  runs, meta = load_runs(workdir)
  done = [r for r in runs if r.status == 'done']
  metrics = list(dict.fromkeys(m for r in done for m in r.evals))
  primary = primary_metric(done, metrics) if metrics else 'loss'
  rows = setting_table(runs, metrics, meta['baseline'])
  best = {m: best_setting(rows, m) for m in metrics}
  plots = report_plots.learning_curves(workdir, done, metrics, {r.setting: _label(r.overrides)
                                                                for r in done})
  report_plots.write_hparams(workdir, done, metrics)
  write_csv(os.path.join(workdir, 'report.csv'), rows, best)
  write_markdown(os.path.join(workdir, 'report.md'), runs, meta, rows, metrics, primary, best,
                 plots)
  logging.info('Wrote %s (%d points: %d done) and report.csv, %d plots, hparams/',
               os.path.join(workdir, 'report.md'), len(runs), len(done), len(plots))
  return {'rows': rows, 'best': best, 'primary': primary, 'runs': runs}
