"""Attention-core micro-benchmark on one CPU core: our forms against PyTorch's fused SDPA.

Times one attention block (q, k, v given; 12 heads x 32, MiniLM's shape) in:

* `einsum (seq, heads)`: attention in the projection layout with the softmax normalised
  before the PV product, the form `SelfAttention` used before `adapler_jax.models.attention`;
* `ours, probs`: `attention.attention_probs_and_output` (training and sown probabilities);
* `ours, output only`: `attention.attention` (inference; query chunks past 128);
* `jax.nn.dot_product_attention` (XLA's reference lowering on CPU);
* `torch SDPA` when torch is installed.

  python bench/attention.py BATCH LENGTH     # e.g. 32 128, or 8 512; CPU=1 picks the core
"""

import os
import sys
import time

os.sched_setaffinity(0, [int(os.environ.get("CPU", "0"))])

# pylint: disable=g-import-not-at-top,wrong-import-position
import jax  # (after pinning: XLA sizes its thread pool from the affinity mask)
import jax.numpy as jnp
import numpy as np

from adapler_jax.models import attention
# pylint: enable=g-import-not-at-top,wrong-import-position

HEADS, HEAD_DIM = 12, 32


def einsum_projection_layout(q, k, v, bias):
  logits = jnp.einsum("bqhd,bkhd->bhqk", q, k) / jnp.sqrt(jnp.float32(q.shape[-1]))
  probs = jax.nn.softmax(logits + bias[:, None, None, :], -1)
  return jnp.einsum("bhqk,bkhd->bqhd", probs, v)


FORMS = {
    "einsum (seq, heads)": einsum_projection_layout,
    "ours, probs": lambda *a: attention.attention_probs_and_output(*a)[1],
    "ours, output only": attention.attention,
    "jax.nn.dot_product_attention":
        lambda q, k, v, bias: jax.nn.dot_product_attention(q, k, v, bias=bias[:, None, None, :]),
}


def best_of(fn, repeats=5):
  fn()
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return min(times)


def main(batch, seq):
  rng = np.random.default_rng(0)
  q, k, v = (jnp.asarray(rng.standard_normal((batch, seq, HEADS, HEAD_DIM)), jnp.float32)
             for _ in range(3))
  bias = jnp.zeros((batch, seq), jnp.float32)
  reference = None
  print(f"batch {batch}, length {seq}, {HEADS} heads x {HEAD_DIM}, one core")
  for name, form in FORMS.items():
    fn = jax.jit(form)
    out = jax.block_until_ready(fn(q, k, v, bias))
    reference = out if reference is None else reference
    seconds = best_of(lambda: jax.block_until_ready(fn(q, k, v, bias)))  # pylint: disable=cell-var-from-loop
    diff = float(jnp.abs(out - reference).max())
    print(f"  {name:30s} {seconds * 1e3:8.1f} ms   max |diff| {diff:.1e}")
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError:
    return
  torch.set_num_threads(1)
  tq, tk, tv = (torch.from_numpy(np.array(t)).transpose(1, 2).contiguous() for t in (q, k, v))
  mask = torch.zeros(batch, 1, 1, seq)
  sdpa = torch.nn.functional.scaled_dot_product_attention
  with torch.inference_mode():
    seconds = best_of(lambda: sdpa(tq, tk, tv, attn_mask=mask))
  print(f"  {'torch SDPA':30s} {seconds * 1e3:8.1f} ms")


if __name__ == "__main__":
  main(int(sys.argv[1]), int(sys.argv[2]))
