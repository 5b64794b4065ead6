"""Parameter names and layouts: Hugging Face GPT-2 / BERT <-> this project's models, explicitly.

Each `Rule` ties one Hugging Face tensor to one or more of our params, with the two exact
(reshape / transpose / split / concatenate: no arithmetic) functions between the layouts:

  load(hf_tensor) -> our arrays     save(our arrays) -> hf_tensor

PyTorch `nn.Linear` stores (out, in), so BERT kernels are transposed; GPT-2's `Conv1D` stores
(in, out) and its q/k/v are one fused `c_attn` tensor, split here. Our attention kernels keep
their heads: E x H x D (query/key/value), H x D x E (out).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax.numpy as jnp
import numpy as np

Array = np.ndarray


@dataclasses.dataclass(frozen=True)
class Rule:
  hf: str  # The Hugging Face name (without a model prefix such as 'transformer.' or 'bert.').
  ours: tuple[str, ...]  # Our param paths ('stack/block_0/attn/query_kernel').
  load: Callable[[Array], tuple[Array, ...]]
  save: Callable[[tuple[Array, ...]], Array]


def same(hf: str, ours: str) -> Rule:
  return Rule(hf, (ours,), lambda w: (w,), lambda ws: ws[0])


def linear(hf: str, ours: str) -> Rule:
  """PyTorch nn.Linear (out, in) <-> flax Dense (in, out)."""
  return Rule(hf, (ours,), lambda w: (w.T,), lambda ws: ws[0].T)


def norm(hf: str, ours: str, weight: str = 'weight', bias: str = 'bias') -> list[Rule]:
  return [same(f'{hf}.{weight}', f'{ours}/scale'), same(f'{hf}.{bias}', f'{ours}/bias')]


def dense(hf: str, ours: str, transpose: bool) -> list[Rule]:
  kernel = linear if transpose else same
  return [kernel(f'{hf}.weight', f'{ours}/kernel'), same(f'{hf}.bias', f'{ours}/bias')]


def _heads_in(hf: str, ours: str, heads: int, transpose: bool) -> list[Rule]:
  """A q/k/v projection: kernel (E, H*D) [or (H*D, E), transposed] <-> E x H x D; bias -> HxD."""
  def load_k(w):
    w = w.T if transpose else w
    return (w.reshape(w.shape[0], heads, -1),)

  def save_k(ws):
    w = ws[0].reshape(ws[0].shape[0], -1)
    return w.T if transpose else w

  return [Rule(f'{hf}.weight', (f'{ours}_kernel',), load_k, save_k),
          Rule(f'{hf}.bias', (f'{ours}_bias',), lambda b: (b.reshape(heads, -1),),
               lambda bs: bs[0].reshape(-1))]


def _heads_out(hf: str, ours: str, heads: int, transpose: bool) -> list[Rule]:
  """The output projection: (H*D, E) [or (E, H*D) transposed] <-> H x D x E; bias as is."""
  def load_k(w):
    w = w.T if transpose else w
    return (w.reshape(heads, -1, w.shape[-1]),)

  def save_k(ws):
    w = ws[0].reshape(-1, ws[0].shape[-1])
    return w.T if transpose else w

  return [Rule(f'{hf}.weight', (f'{ours}_kernel',), load_k, save_k),
          same(f'{hf}.bias', f'{ours}_bias')]


def _fused_qkv(hf: str, ours: str, heads: int) -> list[Rule]:
  """GPT-2's c_attn: one (E, 3E) Conv1D, columns [q | k | v] <-> three E x H x D kernels."""
  names = tuple(f'{ours}/{p}_kernel' for p in ('query', 'key', 'value'))
  bias_names = tuple(f'{ours}/{p}_bias' for p in ('query', 'key', 'value'))

  def load_k(w):
    return tuple(part.reshape(w.shape[0], heads, -1) for part in np.split(w, 3, axis=1))

  def load_b(b):
    return tuple(part.reshape(heads, -1) for part in np.split(b, 3))

  return [Rule(f'{hf}.weight', names, load_k,
               lambda ws: jnp.concatenate([w.reshape(w.shape[0], -1) for w in ws], axis=1)),
          Rule(f'{hf}.bias', bias_names, load_b,
               lambda bs: jnp.concatenate([b.reshape(-1) for b in bs]))]


def gpt2_rules(num_layers: int, num_heads: int, tied: bool) -> list[Rule]:
  """GPT2LMHeadModel, names under 'transformer.' (lm_head only when not tied)."""
  rules = [same('wte.weight', 'token_embed/embedding'), same('wpe.weight', 'position_embed')]
  for i in range(num_layers):
    h, b = f'h.{i}', f'stack/block_{i}'
    rules += norm(f'{h}.ln_1', f'{b}/attn_norm')
    rules += _fused_qkv(f'{h}.attn.c_attn', f'{b}/attn', num_heads)
    rules += _heads_out(f'{h}.attn.c_proj', f'{b}/attn/out', num_heads, transpose=False)
    rules += norm(f'{h}.ln_2', f'{b}/mlp_norm')
    rules += dense(f'{h}.mlp.c_fc', f'{b}/mlp/up', transpose=False)
    rules += dense(f'{h}.mlp.c_proj', f'{b}/mlp/down', transpose=False)
  rules += norm('ln_f', 'final_norm')
  if not tied:  # Outside 'transformer.': marked by a leading '/'.
    rules.append(linear('/lm_head.weight', 'head/kernel'))
  return rules


def bert_rules(num_layers: int, num_heads: int, type_vocab_size: int, head: str,
               pooler: bool) -> list[Rule]:
  """BertModel names under 'bert.'; the heads' ('cls.', 'classifier.') marked by a leading '/'."""
  e = 'embeddings'
  rules = [same(f'{e}.word_embeddings.weight', 'token_embed/embedding'),
           same(f'{e}.position_embeddings.weight', 'position_embed')]
  if type_vocab_size:
    rules.append(same(f'{e}.token_type_embeddings.weight', 'type_embed'))
  rules += norm(f'{e}.LayerNorm', 'embed_norm')
  for i in range(num_layers):
    h, b = f'encoder.layer.{i}', f'stack/block_{i}'
    for part in ('query', 'key', 'value'):
      rules += _heads_in(f'{h}.attention.self.{part}', f'{b}/attn/{part}', num_heads, True)
    rules += _heads_out(f'{h}.attention.output.dense', f'{b}/attn/out', num_heads, True)
    rules += norm(f'{h}.attention.output.LayerNorm', f'{b}/attn_norm')
    rules += dense(f'{h}.intermediate.dense', f'{b}/mlp/up', transpose=True)
    rules += dense(f'{h}.output.dense', f'{b}/mlp/down', transpose=True)
    rules += norm(f'{h}.output.LayerNorm', f'{b}/mlp_norm')
  if head == 'mlm':
    rules += dense('/cls.predictions.transform.dense', 'mlm_dense', transpose=True)
    rules += norm('/cls.predictions.transform.LayerNorm', 'mlm_norm')
    rules.append(same('/cls.predictions.bias', 'mlm_bias'))
  else:
    if pooler:
      rules += dense('pooler.dense', 'pooler', transpose=True)
    rules += dense('/classifier', 'head', transpose=True)
  return rules
