"""Model FLOPs per train step (counted analytically) and device peaks, for MFU.

Model FLOPs count the work the model needs, not what the hardware ran: a multiply-add is 2 FLOPs,
the backward pass costs twice the forward (one matmul for the input gradient, one for the weight
gradient), rematerialization and other recomputation are not counted (that would be HFU), and
elementwise ops, norms, softmax and the optimizer update are left out (they are memory-bound and
small next to the matmuls). So for N matmul weights:

  MLP:             6 * N FLOPs per example.
  Transformer LM:  6 * N + 12 * L * T * d FLOPs per token, N = L * (attention + MLP weights)
                   + d * vocab (the output head; the embedding lookup is not a matmul), and
                   12 * L * T * d for the attention scores QK^T and the weighted sum AV
                   (2 * T * d each per token and layer forward, x3 with backward), T the context
                   length, d = heads * head_dim. The causal half is counted too (PaLM's
                   convention; XLA's attention computes it, cuDNN's skips it).

Peaks are dense bf16 matmul FLOP/s per JAX device (a chip, or a TensorCore before TPU v4),
from the vendors' data sheets; `config.benchmark.peak_flops` overrides them.
"""

from __future__ import annotations

import math

import ml_collections

# (lower-cased substring of jax.Device.device_kind, dense bf16 FLOP/s per device). First match
# wins, so the more specific names come first.
PEAK_BF16_FLOPS = (
    ('h100 pcie', 756e12),
    ('h100', 989e12),  # 'NVIDIA H100 80GB HBM3' (SXM).
    ('h200', 989e12),  # Also 'NVIDIA GH200 ...'.
    ('h800', 989e12),
    ('b200', 2250e12),
    ('a100', 312e12),
    ('a800', 312e12),
    ('l40s', 362e12),
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


def table_peak_flops(device_kind: str) -> float | None:
  """Dense bf16 peak of one device of this kind, or None for a kind not in the table."""
  kind = device_kind.lower()
  return next((peak for name, peak in PEAK_BF16_FLOPS if name in kind), None)


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


def train_step_flops(model_cfg: ml_collections.ConfigDict, meta: dict,
                     batch: dict) -> tuple[float, str] | None:
  """(model FLOPs of one train step on `batch`, the formula used), or None for an unknown model.

  `batch` holds the global batch's arrays or their shapes (anything with `.shape`).
  """
  inputs = batch['inputs'].shape
  examples = inputs[0]
  if model_cfg.name == 'mlp':
    n = mlp_matmul_params(math.prod(inputs[1:]), tuple(model_cfg.widths), meta['num_classes'])
    return 6.0 * n * examples, f'6 * N * examples, N = {n:,} matmul weights'
  if {'num_layers', 'd_model', 'num_heads'} <= set(model_cfg.keys()):
    # Transformers (the LM; an encoder the same way): tokens = examples * sequence length.
    d, layers, context = model_cfg.d_model, model_cfg.num_layers, inputs[1]
    outputs = meta.get('vocab_size') if meta.get('task') == 'lm' else meta.get('num_classes', 0)
    n = transformer_matmul_params(
        num_layers=layers, d_model=d, num_heads=model_cfg.num_heads,
        num_kv_heads=model_cfg.get('num_kv_heads', 0) or model_cfg.num_heads,
        d_ff=model_cfg.get('d_ff', 0) or 4 * d, vocab_size=outputs or 0,
        swiglu=model_cfg.get('mlp', 'gelu') == 'swiglu')
    per_token = transformer_flops_per_token(n, layers, context, d)
    return (per_token * examples * context,
            f'(6 * N + 12 * L * T * d) * tokens, N = {n:,} matmul weights, L = {layers}, '
            f'T = {context}, d = {d}')
  return None


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
