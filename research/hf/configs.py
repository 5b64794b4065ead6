"""Hugging Face config.json <-> `config.model`: the architecture keys each side must agree on.

Only what fixes the parameters and the function is taken from config.json (sizes, norms, GELU,
epsilon, token types); training choices (dropout, dtype, remat, ...) stay the experiment's.
"""

from __future__ import annotations

from typing import Any

import ml_collections

from research.errors import ConfigError

# model_type -> (the Hugging Face classes we read and write, the base model's name prefix).
ARCHITECTURES = {'gpt2': (('GPT2LMHeadModel', 'GPT2Model'), 'transformer'),
                 'bert': (('BertForMaskedLM', 'BertForSequenceClassification', 'BertModel',
                           'BertForPreTraining'), 'bert')}
GELUS = {'gelu': 'exact', 'gelu_new': 'tanh', 'gelu_pytorch_tanh': 'tanh'}


def supported() -> str:
  return ', '.join(f'{t} ({", ".join(a)})' for t, (a, _) in ARCHITECTURES.items())


def model_type(hf: dict[str, Any], where: str) -> str:
  kind = hf.get('model_type')
  if kind not in ARCHITECTURES:
    raise ConfigError(f'{where}: model_type={kind!r} (architectures {hf.get("architectures")}) is '
                      f'not supported; supported: {supported()}.')
  return kind


def _gelu(name: str, where: str) -> str:
  if name not in GELUS:
    raise ConfigError(f'{where}: activation {name!r} is not supported; supported: {sorted(GELUS)}.')
  return GELUS[name]


def _refuse(hf: dict, where: str, **expected) -> None:
  """Options that change the function in ways our blocks do not implement."""
  for key, want in expected.items():
    if hf.get(key, want) != want:
      raise ConfigError(f'{where}: {key}={hf[key]!r} is not supported (only {want!r}).')


def model_keys(hf: dict[str, Any], where: str) -> dict[str, Any]:
  """The `config.model` keys that express config.json's architecture exactly."""
  kind = model_type(hf, where)
  common = dict(norm='layernorm', mlp='gelu', positions='learned', use_bias=True,
                num_kv_heads=0, tie_embeddings=bool(hf.get('tie_word_embeddings', True)))
  if kind == 'gpt2':
    _refuse(hf, where, scale_attn_by_inverse_layer_idx=False, reorder_and_upcast_attn=False,
            scale_attn_weights=True, add_cross_attention=False)
    return dict(common, num_layers=hf['n_layer'], d_model=hf['n_embd'], num_heads=hf['n_head'],
                d_ff=hf.get('n_inner') or 4 * hf['n_embd'], max_len=hf['n_positions'],
                layernorm_epsilon=hf.get('layer_norm_epsilon', 1e-5), norm_position='pre',
                gelu=_gelu(hf.get('activation_function', 'gelu_new'), where), type_vocab_size=0)
  _refuse(hf, where, position_embedding_type='absolute', is_decoder=False,
          add_cross_attention=False)
  if not common['tie_embeddings']:
    raise ConfigError(f'{where}: tie_word_embeddings=false is not supported for BERT (the MLM '
                      'decoder is the word embedding here).')
  return dict(common, num_layers=hf['num_hidden_layers'], d_model=hf['hidden_size'],
              num_heads=hf['num_attention_heads'], d_ff=hf['intermediate_size'],
              max_len=hf['max_position_embeddings'], layernorm_epsilon=hf['layer_norm_eps'],
              norm_position='post', gelu=_gelu(hf.get('hidden_act', 'gelu'), where),
              type_vocab_size=hf.get('type_vocab_size', 2), pooling='first')


def model_type_of(cfg: ml_collections.ConfigDict) -> str:
  """Which Hugging Face architecture a model config is (ConfigError when it is neither)."""
  return 'gpt2' if cfg.name == 'transformer_lm' else 'bert'


def check_expressible(cfg: ml_collections.ConfigDict, kind: str) -> None:
  """ConfigError naming each key that has no counterpart in the Hugging Face architecture."""
  want = dict(norm='layernorm', mlp='gelu', positions='learned', use_bias=True,
              norm_position='pre' if kind == 'gpt2' else 'post', scan_layers=False)
  if kind == 'bert':
    want.update(pooling='first', tie_embeddings=True)
  bad = [f'config.model.{k}={cfg[k]!r} (needs {v!r})' for k, v in want.items() if cfg[k] != v]
  if cfg.num_kv_heads not in (0, cfg.num_heads):
    bad.append(f'config.model.num_kv_heads={cfg.num_kv_heads} (needs 0: multi-head attention)')
  if kind == 'gpt2' and cfg.type_vocab_size:
    bad.append('config.model.type_vocab_size (GPT-2 has no token types)')
  if bad:
    raise ConfigError(f'This model has no exact Hugging Face {kind} form: ' + '; '.join(bad))


def hf_config(cfg: ml_collections.ConfigDict, vocab_size: int, num_labels: int | None,
              base: dict[str, Any] | None = None) -> dict[str, Any]:
  """config.json for `cfg` (from_pretrained rebuilds the same model); `base` (the config.json a
  run was loaded from) keeps the keys we do not model (token ids, generation defaults)."""
  kind = model_type_of(cfg)
  check_expressible(cfg, kind)
  out = dict(base or {})
  out.pop('transformers_version', None)
  gelu = {'exact': 'gelu', 'tanh': 'gelu_new'}[cfg.gelu]
  if kind == 'gpt2':
    out.update(model_type='gpt2', architectures=['GPT2LMHeadModel'], vocab_size=vocab_size,
               n_layer=cfg.num_layers, n_embd=cfg.d_model, n_head=cfg.num_heads,
               n_inner=None if cfg.d_ff in (0, 4 * cfg.d_model) else cfg.d_ff,
               n_positions=cfg.max_len, layer_norm_epsilon=cfg.layernorm_epsilon,
               activation_function=gelu, tie_word_embeddings=bool(cfg.tie_embeddings))
    return out
  arch = 'BertForMaskedLM' if cfg.name == 'transformer_encoder_mlm' else \
      'BertForSequenceClassification'
  out.update(model_type='bert', architectures=[arch], vocab_size=vocab_size,
             num_hidden_layers=cfg.num_layers, hidden_size=cfg.d_model,
             num_attention_heads=cfg.num_heads, intermediate_size=cfg.d_ff or 4 * cfg.d_model,
             max_position_embeddings=cfg.max_len, layer_norm_eps=cfg.layernorm_epsilon,
             hidden_act=gelu, type_vocab_size=cfg.type_vocab_size, tie_word_embeddings=True,
             position_embedding_type='absolute')
  if num_labels is not None and arch == 'BertForSequenceClassification':
    out.update(num_labels=num_labels,
               id2label={str(i): f'LABEL_{i}' for i in range(num_labels)},
               label2id={f'LABEL_{i}': i for i in range(num_labels)})
  return out
