"""Micro-benchmarks on one CPU core: the attention core and the feed-forward block.

Times one attention block (q, k, v given; 12 heads x 32, MiniLM's shape) in:

* `einsum (seq, heads)`: attention in the projection layout with the softmax normalised
  before the PV product, the form `SelfAttention` used before `adapler_jax.models.attention`;
* `ours, probs`: `attention.attention_probs_and_output` (training and sown probabilities);
* `ours, output only`: `attention.attention` (inference; query chunks past 128);
* `jax.nn.dot_product_attention` (XLA's reference lowering on CPU);
* `torch SDPA` when torch is installed.

The feed-forward block (MiniLM's 384 -> 1536 -> 384 with GELU, residual and LayerNorm)
is timed whole and in chunks of token rows (`adapler_jax.models.walk.ParamLayer`),
against the same block in PyTorch (`BertIntermediate` + `BertOutput`).

  python bench/attention.py BATCH LENGTH         # e.g. 32 128, or 8 512; CPU=1 picks the core
  python bench/attention.py --ffn BATCH LENGTH
"""

import argparse
import os
import time

os.sched_setaffinity(0, [int(os.environ.get("CPU", "0"))])

# pylint: disable=g-import-not-at-top,wrong-import-position
import jax  # (after pinning: XLA sizes its thread pool from the affinity mask)
import jax.numpy as jnp
import numpy as np

from adapler_jax.models import attention, walk
from adapler_jax.models.bert import EncoderConfig, Layer
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


def feed_forward(batch, seq):
  cfg = EncoderConfig(hidden_size=HEADS * HEAD_DIM, num_heads=HEADS, num_layers=1,
                      intermediate_size=4 * HEADS * HEAD_DIM)
  x = jnp.asarray(np.random.default_rng(0).standard_normal((batch, seq, cfg.hidden_size)),
                  jnp.float32)
  params = Layer(cfg).init(jax.random.PRNGKey(0), x, jnp.zeros((batch, seq)))["params"]
  print(f"feed-forward, batch {batch}, length {seq} ({batch * seq} token rows), one core")
  for rows in (None, 2048, 1024, 512, 256):
    fn = jax.jit(lambda p, x, rows=rows: walk.ParamLayer(cfg, p, rows).feed_forward(x))
    seconds = best_of(lambda: jax.block_until_ready(fn(params, x)))  # pylint: disable=cell-var-from-loop
    print(f"  {'whole' if rows is None else f'chunks of {rows} rows':30s} {seconds * 1e3:8.1f} ms")
  try:
    import torch  # pylint: disable=g-import-not-at-top
    from transformers import BertConfig  # pylint: disable=g-import-not-at-top
    from transformers.models.bert import modeling_bert  # pylint: disable=g-import-not-at-top
  except ImportError:
    return
  torch.set_num_threads(1)
  hf = BertConfig(hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size)
  inner, outer = modeling_bert.BertIntermediate(hf).eval(), modeling_bert.BertOutput(hf).eval()
  tx = torch.from_numpy(np.array(x))
  with torch.inference_mode():
    seconds = best_of(lambda: outer(inner(tx), tx))
  print(f"  {'torch':30s} {seconds * 1e3:8.1f} ms")


def _positive(text: str) -> int:
  if not text.isdecimal() or int(text) < 1:
    raise argparse.ArgumentTypeError(f"{text!r} is not a positive integer")
  return int(text)


if __name__ == "__main__":
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("batch", type=_positive, help="batch size, e.g. 32")
  parser.add_argument("length", type=_positive, help="sequence length, e.g. 128")
  parser.add_argument("--ffn", action="store_true",
                      help="time the feed-forward block instead of the attention core")
  args = parser.parse_args()
  (feed_forward if args.ffn else main)(args.batch, args.length)
