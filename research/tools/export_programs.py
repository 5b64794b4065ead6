"""The programs an export serializes: `jax.export` (StableHLO) of the forward pass per task.

Each program closes over the params (baked in as constants, so one file is the whole model) and
takes arrays with a symbolic batch dimension `b` (and a symbolic length `l` for sequences):

  classification  logits(inputs[, input_mask]) -> logits_BxC
  lm              logits(inputs_BxL) -> logits_BxLxV
                  prefill(inputs_BxL) -> (logits_BxV, cache)
                  decode_step(cache, token_B, pos) -> (logits_BxV, cache)

so KV-cache generation can be driven from any process that has jax. Adding a task is one builder
in PROGRAMS.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import export as jax_export

from research.data.spec import Meta, Signature
from research.errors import RunError
from research.models.lm import decoder, init_cache

PyTree = Any
# Lowered for every platform jax.export supports here, so the same file serves a CPU or GPU/TPU
# process (the export's own check runs only on the exporting machine's backend).
PLATFORMS = ('cpu', 'cuda', 'tpu')
CHECK_BATCH = 3  # The export's own check runs each program at this (untraced) batch size.


@dataclasses.dataclass(frozen=True)
class Program:
  """fn(*args) with the params closed over; args are ShapeDtypeStructs with symbolic dims.

  check_args(batch, rng) gives concrete args for the export's own check.
  """

  name: str
  fn: Callable
  args: tuple
  arg_names: tuple[str, ...]
  result_names: tuple[str, ...]
  doc: str
  check_args: Callable[[int, np.random.Generator], tuple]
  constraints: tuple[str, ...] = ()  # On the symbolic dims, e.g. 'l <= 64'.


def random_inputs(signature: Signature, batch: int, rng: np.random.Generator, high: int = 2,
                  length: int = 8) -> tuple:
  """Concrete arrays for a signature: `b` -> batch, `l` -> length; ints in [0, high)."""
  out = []
  for dims, dtype in signature.values():
    shape = [batch if d == 'b' else length if d == 'l' else int(d)
             for d in (x.strip() for x in dims.split(','))]
    if np.issubdtype(np.dtype(dtype), np.integer):
      out.append(rng.integers(0, high, shape).astype(dtype))
    else:
      out.append(rng.random(shape, np.float32).astype(dtype))
  return tuple(out)


def symbolic_args(signature: Signature, scope: jax_export.SymbolicScope) -> tuple:
  return tuple(jax.ShapeDtypeStruct(jax_export.symbolic_shape(dims, scope=scope), jnp.dtype(dt))
               for dims, dt in signature.values())


def classifier_programs(model, params: PyTree, meta: Meta, signature: Signature,
                        constraints: tuple[str, ...]) -> list[Program]:
  names = tuple(signature)

  def logits(*inputs):
    return model.apply({'params': params}, **dict(zip(names, inputs, strict=True)),
                       train=False)

  return [Program('logits', logits, symbolic_args(signature, jax_export.SymbolicScope(constraints)),
                  names, ('logits',), f'({", ".join(names)}) -> logits_BxC',
                  lambda b, rng: random_inputs(signature, b, rng, meta.vocab_size or 2),
                  constraints)]


def lm_programs(model, params: PyTree, meta: Meta, signature: Signature,
                constraints: tuple[str, ...]) -> list[Program]:
  """logits over a sequence, and prefill + decode_step to drive KV-cache generation from outside.

  The cache is the decoder's `cache` collection without its index: `pos` says where `token` goes.
  Positions must stay below max_len; past it, prefill again from the last tokens (a sliding
  window, as research/models/decode.py does).
  """
  max_len, vocab = model.cfg.max_len, meta.vocab_size
  dec = decoder(model)
  (tokens_spec,) = symbolic_args(signature, jax_export.SymbolicScope(constraints))  # (b, l)
  cache_1 = jax.eval_shape(lambda: init_cache(model, 1))
  cache_1.pop('index')
  b_decode, = jax_export.symbolic_shape('b')  # Own scope: `l` is not among decode_step's dims.
  cache_spec = jax.tree.map(lambda s: jax.ShapeDtypeStruct((b_decode, *s.shape[1:]), s.dtype),
                            cache_1)

  def run(cache: dict, tokens_BxL, pos):
    logits_BxLxV, variables = dec.apply({'params': params, 'cache': dict(cache, index=pos)},
                                        tokens_BxL, train=False, mutable=['cache'])
    new_cache = dict(variables['cache'])
    new_cache.pop('index')
    return logits_BxLxV[:, -1], new_cache

  def logits(tokens_BxL):
    return model.apply({'params': params}, tokens_BxL, train=False)

  def prefill(tokens_BxL):
    cache = init_cache(model, tokens_BxL.shape[0])
    cache.pop('index')
    return run(cache, tokens_BxL, jnp.int32(0))

  def decode_step(cache, token_B, pos):
    return run(cache, token_B[:, None], pos)

  def tokens(batch, rng, length=max_len):
    return rng.integers(0, vocab, (batch, length)).astype(np.int32)

  def decode_args(batch, rng):
    prompt = max(1, max_len // 2)
    _, cache = jax.jit(prefill)(tokens(batch, rng, prompt))
    return cache, tokens(batch, rng, 1)[:, 0], np.int32(prompt)

  token_spec = jax.ShapeDtypeStruct((b_decode,), jnp.int32)
  pos_spec = jax.ShapeDtypeStruct((), jnp.int32)
  return [
      Program('logits', logits, (tokens_spec,), ('inputs',), ('logits',),
              'inputs_BxL (token ids) -> logits_BxLxV (next-token logits at every position)',
              lambda batch, rng: (tokens(batch, rng),), constraints),
      Program('prefill', prefill, (tokens_spec,), ('inputs',), ('logits', 'cache'),
              'inputs_BxL (prompt ids) -> (next-token logits_BxV, cache of positions 0..L-1)',
              lambda batch, rng: (tokens(batch, rng, max(1, max_len // 2)),), constraints),
      Program('decode_step', decode_step, (cache_spec, token_spec, pos_spec),
              ('cache', 'token', 'pos'), ('logits', 'cache'),
              '(cache, token_B at position pos) -> (next-token logits_BxV, cache)',
              decode_args, (f'pos < {max_len}',)),
  ]


PROGRAMS = {'classification': classifier_programs, 'lm': lm_programs}


def export_program(program: Program) -> jax_export.Exported:
  return jax_export.export(jax.jit(program.fn), platforms=PLATFORMS)(*program.args)


def check_program(program: Program, exported: jax_export.Exported, tolerance: float) -> float:
  """Max |exported - in-process| over the outputs at batch CHECK_BATCH; RunError past tolerance."""
  args = program.check_args(CHECK_BATCH, np.random.default_rng(0))
  want = jax.tree.leaves(jax.jit(program.fn)(*args))
  got = jax.tree.leaves(exported.call(*args))
  diff = max(float(np.max(np.abs(np.asarray(a, np.float32) - np.asarray(w, np.float32))))
             for a, w in zip(got, want, strict=True))
  scale = max(float(np.max(np.abs(np.asarray(w, np.float32)))) for w in want)
  if not diff <= tolerance * max(1.0, scale):
    raise RunError(f'The exported {program.name} program differs from the model by {diff:g} '
                   f'(tolerance {tolerance:g} x {max(1.0, scale):g}); nothing was written.')
  return diff


def describe(names: tuple[str, ...], trees: tuple) -> list[dict]:
  """One entry per array, in the program's flat order: name (with the cache's tree path), shape
  (symbolic dims as strings) and dtype."""
  out = []
  for name, tree in zip(names, trees, strict=True):
    for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
      out.append({'name': name + jax.tree_util.keystr(path), 'dtype': str(leaf.dtype),
                  'shape': [d if isinstance(d, int) else str(d) for d in leaf.shape]})
  return out


def results_tree(exported: jax_export.Exported) -> tuple:
  results = jax.tree_util.tree_unflatten(exported.out_tree, exported.out_avals)
  return results if isinstance(results, tuple) else (results,)
