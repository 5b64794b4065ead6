"""Model FLOPs per train step (counted analytically) and device peaks, for MFU.

Model FLOPs count the work the model needs, not what the hardware ran: a multiply-add is 2 FLOPs,
the backward pass costs twice the forward (one matmul for the input gradient, one for the weight
gradient) except in a layer fed by the data itself (the MLP's first layer, the patch embedding),
whose input gradient nothing needs: 4 FLOPs per weight there. Rematerialization and other
recomputation are not counted (that would be HFU), nor are elementwise ops, norms, softmax and the
optimizer update (memory-bound and small next to the matmuls). A weight is counted once per
position it multiplies. So, with T the positions a sequence model runs on:

  MLP:      (4 * N_in + 6 * N_rest) per example, N_in the first layer's weights.
  Decoder LM (per token, T = context):
            6 * N + 12 * L * T * d,  N = L * (Q, K, V, output and MLP weights) + d * vocab (the
            output head; the embedding lookup is not a matmul), and 12 * L * T * d the attention
            scores QK^T and the weighted sum AV (2 * T * d each per position and layer forward,
            x3 with backward), d = heads * head_dim. The causal half is counted too (PaLM's
            convention; XLA's attention computes it, cuDNN's skips it).
  Encoder:  the same per position, T = input positions (patches, or the batch's token width)
            + 1 for [CLS]; plus 4 * patch_dim * d per patch (the patch embedding), plus the head:
            6 * d * classes per example (classifier: [CLS] or the mean is classified once), or
            6 * (d * d + d * vocab) per predicted position (masked LM: dense, then the tied
            vocabulary projection, at `mlm_positions` only).

Peaks are dense bf16 matmul FLOP/s per JAX device (a chip, or a TensorCore before TPU v4),
from the vendors' data sheets; `config.benchmark.peak_flops` overrides them.
"""

from __future__ import annotations

import math
import re

import ml_collections

from research.data.spec import Meta
from research.models import encoder

# (name as words of jax.Device.device_kind, dense bf16 FLOP/s per device). A name matches whole
# words of the kind ('l4' is not 'NVIDIA L40'), and the longest matching name wins ('h100 pcie'
# over 'h100', 'tpu v5 lite' over 'tpu v5').
PEAK_BF16_FLOPS = (
    ('h100 pcie', 756e12),
    ('h100', 989e12),  # 'NVIDIA H100 80GB HBM3' (SXM).
    ('h200', 989e12),
    ('gh200', 989e12),  # 'NVIDIA GH200 480GB'.
    ('h800', 989e12),
    ('b200', 2250e12),
    ('a100', 312e12),  # 'NVIDIA A100-SXM4-80GB', 'NVIDIA A100-PCIE-40GB'.
    ('a800', 312e12),
    ('l40s', 362e12),
    ('l40', 181e12),
    ('l4', 121e12),
    ('tpu v6 lite', 918e12),  # Trillium (v6e).
    ('tpu v6e', 918e12),
    ('tpu v5 lite', 197e12),  # v5e.
    ('tpu v5e', 197e12),
    ('tpu v5p', 459e12),
    ('tpu v5', 459e12),  # v5p reports 'TPU v5'.
    ('tpu v4', 275e12),
    ('tpu v3', 61.5e12),  # Per TensorCore (two JAX devices per chip).
    ('tpu v2', 22.5e12),
)


def _words(text: str) -> tuple[str, ...]:
  return tuple(re.findall(r'[a-z0-9]+', text.lower()))


def _has_words(kind: tuple[str, ...], name: tuple[str, ...]) -> bool:
  return any(kind[i:i + len(name)] == name for i in range(len(kind) - len(name) + 1))


def table_peak_flops(device_kind: str) -> float | None:
  """Dense bf16 peak of one device of this kind, or None for a kind not in the table."""
  kind = _words(device_kind)
  hits = [(len(_words(name)), peak) for name, peak in PEAK_BF16_FLOPS
          if _has_words(kind, _words(name))]
  return max(hits, key=lambda hit: hit[0])[1] if hits else None


def mlp_matmul_params(input_size: int, widths: tuple[int, ...], num_classes: int) -> int:
  sizes = (input_size, *widths, num_classes)
  return sum(a * b for a, b in zip(sizes[:-1], sizes[1:], strict=False))


def transformer_matmul_params(*, num_layers: int, d_model: int, num_heads: int, num_kv_heads: int,
                              d_ff: int, vocab_size: int, swiglu: bool = False) -> int:
  """Weights that multiply activations: per layer Q, K, V, output and the MLP; plus the head."""
  head_dim = d_model // num_heads
  attention = d_model * head_dim * (2 * num_heads + 2 * num_kv_heads)
  mlp = (3 if swiglu else 2) * d_model * d_ff
  return num_layers * (attention + mlp) + d_model * vocab_size


def transformer_flops_per_token(matmul_params: int, num_layers: int, context: int,
                                d_model: int) -> float:
  return 6.0 * matmul_params + 12.0 * num_layers * context * d_model


def _layer_params(model_cfg: ml_collections.ConfigDict, head_outputs: int) -> int:
  d = model_cfg.d_model
  return transformer_matmul_params(
      num_layers=model_cfg.num_layers, d_model=d, num_heads=model_cfg.num_heads,
      num_kv_heads=model_cfg.get('num_kv_heads', 0) or model_cfg.num_heads,
      d_ff=model_cfg.get('d_ff', 0) or 4 * d, vocab_size=head_outputs,
      swiglu=model_cfg.get('mlp', 'gelu') == 'swiglu')


def _mlp_terms(model_cfg: ml_collections.ConfigDict, meta: Meta, batch: dict) -> tuple[dict, str]:
  inputs = batch['inputs'].shape
  widths = tuple(model_cfg.widths)
  first = math.prod(inputs[1:]) * (widths[0] if widths else meta.num_classes)
  rest = mlp_matmul_params(math.prod(inputs[1:]), widths, meta.num_classes) - first
  return ({'input_layer': 4.0 * first * inputs[0], 'weights': 6.0 * rest * inputs[0]},
          f'(4 * N_in + 6 * N_rest) * examples, N_in = {first:,}, N_rest = {rest:,} matmul weights')


def _lm_terms(model_cfg: ml_collections.ConfigDict, meta: Meta, batch: dict) -> tuple[dict, str]:
  examples, context = batch['inputs'].shape[:2]
  d, layers = model_cfg.d_model, model_cfg.num_layers
  n = _layer_params(model_cfg, meta.vocab_size)
  tokens = examples * context
  return ({'weights': 6.0 * n * tokens, 'attention': 12.0 * layers * context * d * tokens},
          f'(6 * N + 12 * L * T * d) * tokens, N = {n:,} matmul weights, L = {layers}, '
          f'T = {context}, d = {d}')


def encoder_positions(model_cfg: ml_collections.ConfigDict, input_shape: tuple[int, ...]) -> int:
  """Positions the encoder's layers run on for one example of `input_shape` ([CLS] included)."""
  patch_size = model_cfg.get('patch_size', 0)
  if len(input_shape) == 1:  # Token ids: the batch's width.
    inputs = input_shape[0]
  else:
    inputs = math.prod(encoder.patch_grid(tuple(input_shape), patch_size))
  return inputs + (model_cfg.get('pooling', 'cls') == 'cls')


def _encoder_terms(model_cfg: ml_collections.ConfigDict, meta: Meta,
                   batch: dict) -> tuple[dict, str]:
  inputs = batch['inputs'].shape
  examples = inputs[0]
  d, layers = model_cfg.d_model, model_cfg.num_layers
  positions = encoder_positions(model_cfg, tuple(inputs[1:]))
  n = _layer_params(model_cfg, 0)
  terms = {'weights': 6.0 * n * examples * positions,
           'attention': 12.0 * layers * positions * d * examples * positions}
  formula = (f'(6 * N + 12 * L * T * d) * examples * T, N = {n:,} layer matmul weights, '
             f'L = {layers}, T = {positions}, d = {d}')
  if len(inputs) > 2:  # Patches: a matmul whose input is the data.
    patch_dim = model_cfg.patch_size ** (len(inputs) - 2) * inputs[-1]
    patches = math.prod(encoder.patch_grid(tuple(inputs[1:]), model_cfg.patch_size))
    terms['embedding'] = 4.0 * patch_dim * d * examples * patches
    formula += f'; + 4 * {patch_dim} * d per patch'
  if model_cfg.name == 'transformer_encoder_mlm':
    vocab = meta.vocab_size
    predicted = (batch['mlm_positions'].shape[1] if 'mlm_positions' in batch
                 else positions - (model_cfg.get('pooling', 'cls') == 'cls'))
    terms['head'] = 6.0 * (d * d + d * vocab) * examples * predicted
    formula += f'; + 6 * (d * d + d * {vocab}) per predicted position ({predicted} per example)'
  else:
    terms['head'] = 6.0 * d * meta.num_classes * examples
    formula += f'; + 6 * d * {meta.num_classes} per example (head)'
  return terms, formula


TERMS = {'mlp': _mlp_terms, 'transformer_lm': _lm_terms, 'transformer_encoder': _encoder_terms,
         'transformer_encoder_mlm': _encoder_terms}


def train_step_flop_terms(model_cfg: ml_collections.ConfigDict, meta: Meta,
                          batch: dict) -> tuple[dict[str, float], str] | None:
  """({term: model FLOPs of one train step on `batch`}, the formula used), or None for a model
  without a formula. Terms: weights, attention, embedding, head, input_layer (where present).

  `batch` holds the global batch's arrays or their shapes (anything with `.shape`).
  """
  terms = TERMS.get(model_cfg.name)
  return terms(model_cfg, meta, batch) if terms else None


def train_step_flops(model_cfg: ml_collections.ConfigDict, meta: Meta,
                     batch: dict) -> tuple[float, str] | None:
  """(model FLOPs of one train step on `batch`, the formula used), or None for an unknown model."""
  counted = train_step_flop_terms(model_cfg, meta, batch)
  if counted is None:
    return None
  terms, formula = counted
  return sum(terms.values()), formula


def xla_flops(compiled) -> float | None:
  """FLOPs XLA's cost model counts in a compiled program (all ops, recomputation included), or
  None where the backend has no cost analysis."""
  try:
    cost = compiled.cost_analysis()
  except NotImplementedError:
    return None
  if isinstance(cost, (list, tuple)):  # Older JAX: one dict per program.
    cost = cost[0] if cost else None
  flops = (cost or {}).get('flops')
  return float(flops) if flops is not None and flops >= 0 else None
