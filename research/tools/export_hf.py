r"""--mode=export --format=hf: a run as a Hugging Face checkpoint folder (WORKDIR/export_hf/).

  python launch.py --mode=export --format=hf --workdir=/tmp/gpt2_tiny [--checkpoint=latest|best|N]

  config.json         GPT2LMHeadModel, BertForMaskedLM or BertForSequenceClassification
  model.safetensors   the params under Hugging Face names and layouts (research/hf/names.py),
                      tied weights omitted as save_pretrained omits them
  tokenizer.json      the run's tokenizer, when it is a Hugging Face one (init_from=hf:PATH)
  + the source folder's tokenizer_config.json / generation_config.json, when the run has them

so `AutoModel*.from_pretrained(DIR)` and `AutoTokenizer.from_pretrained(DIR)` load it. The file is
read back and mapped to our params again before the folder is moved into place: a round trip that
is not bit for bit is a RunError.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile

import numpy as np

from research import data, hf
from research.config import complete_model_config
from research.data.tokenizers import HFTokenizer
from research.errors import ConfigError, RunError
from research.hf import files
from research.tools.export import (
  flatten_params,
  load_run_config,
  replace_dir,
  resolve_checkpoint,
  restore_model,
)

EXPORT_DIR = 'export_hf'


def export_hf(workdir: str, checkpoint: str = 'latest') -> dict:
  """Writes WORKDIR/export_hf/; returns what was written (ConfigError before any compute for a
  run that has no exact Hugging Face form)."""
  if not os.path.isdir(workdir):
    raise ConfigError(f'--workdir={workdir} does not exist.')
  config = load_run_config(workdir)
  cfg = complete_model_config(config.model)
  hf.configs.check_expressible(cfg, hf.model_type_of(cfg))
  spec = data.get_spec(config, workdir)
  step = resolve_checkpoint(config, workdir, checkpoint)
  meta = spec.read_meta(config, workdir)
  if meta.task == 'classification' and not cfg.pooler:
    raise ConfigError('BertForSequenceClassification has a pooler: export a run trained with '
                      'config.model.pooler=True (init_from=hf:PATH sets it).')
  _, _, step, params = restore_model(config, workdir, spec, meta, step)
  flat = flatten_params(params)
  tensors = hf.to_hf(flat, cfg)
  source = os.path.join(workdir, hf.SOURCE)
  base = None
  if os.path.exists(os.path.join(source, files.CONFIG)):
    with open(os.path.join(source, files.CONFIG)) as f:
      base = json.load(f)
  hf_cfg = hf.hf_config(cfg, meta.vocab_size, meta.num_classes, base)
  tokenizer = spec.load_tokenizer(workdir)

  tmp = tempfile.mkdtemp(prefix='.export-hf-tmp-', dir=workdir)
  try:
    files.write_tensors(os.path.join(tmp, files.WEIGHTS), tensors)
    with open(os.path.join(tmp, files.CONFIG), 'w') as f:
      json.dump(hf_cfg, f, indent=2, sort_keys=True)
    written = [files.WEIGHTS, files.CONFIG]
    if isinstance(tokenizer, HFTokenizer):
      tokenizer.save_hf(os.path.join(tmp, files.TOKENIZER))
      written.append(files.TOKENIZER)
      for name in hf.SOURCE_FILES[1:]:
        if os.path.exists(os.path.join(source, name)):
          shutil.copyfile(os.path.join(source, name), os.path.join(tmp, name))
          written.append(name)
    _check_round_trip(tmp, cfg, flat)
    os.chmod(tmp, 0o755)  # mkdtemp made it private; the export is meant to be handed on.
    out = os.path.join(workdir, EXPORT_DIR)
    replace_dir(tmp, out)
  finally:
    shutil.rmtree(tmp, ignore_errors=True)
  return {'directory': out, 'step': step, 'files': written, 'tensors': len(tensors),
          'architecture': hf_cfg['architectures'][0],
          'tokenizer': isinstance(tokenizer, HFTokenizer)}


def _check_round_trip(folder: str, cfg, flat: dict[str, np.ndarray]) -> None:
  """Reads the written file back through the import path; every param must come back exact."""
  ckpt = hf.Checkpoint(folder, {}, hf.model_type_of(cfg),
                       files.read_tensors([os.path.join(folder, files.WEIGHTS)]))
  loaded = hf.to_params(ckpt, cfg, {n: x.shape for n, x in flat.items()})
  bad = [n for n, x in flat.items()
         if n not in loaded.values or loaded.values[n].tobytes() != x.tobytes()]
  if bad or loaded.left_out:
    raise RunError(f'The Hugging Face export does not read back exactly: {bad[:5]} differ, '
                   f'{list(loaded.left_out)[:5]} unexpected.')


def summary(result: dict) -> str:
  lines = [f'Exported step {result["step"]} as {result["architecture"]} to '
           f'{result["directory"]} ({result["tensors"]} tensors; read back bit for bit):']
  lines += [f'  {name}' for name in result['files']]
  if not result['tokenizer']:
    lines.append('  (no tokenizer.json: this run\'s tokenizer is not a Hugging Face one)')
  return '\n'.join(lines)
