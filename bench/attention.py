"""Attention-core micro-benchmark: where ours-full loses to PyTorch on CPU.

Times one attention block (q, k, v given; 12 heads x 32) on one CPU core in four JAX forms
and PyTorch's fused SDPA (when torch is installed). The first form is the einsum/softmax code
of `adapler_jax.models.bert.SelfAttention`.

  python bench/attention.py BATCH LENGTH     # e.g. 32 128, or 8 512; CPU=1 picks the core
"""

import os
import sys
import time

os.sched_setaffinity(0, [int(os.environ.get("CPU", "0"))])

import jax  # noqa: E402  (after pinning: XLA sizes its pool from the affinity mask)
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
B, S, H, D = int(sys.argv[1]), int(sys.argv[2]), 12, 32
rng = np.random.default_rng(0)
q, k, v = (jnp.asarray(rng.standard_normal((B, S, H, D)), jnp.float32) for _ in range(3))
bias = jnp.zeros((B, S), jnp.float32)



def cur(q, k, v, bias):
  l = jnp.einsum("bqhd,bkhd->bhqk", q, k) / jnp.sqrt(32.)
  l = l + bias[:, None, None, :]
  p = jax.nn.softmax(l, -1)
  return jnp.einsum("bhqk,bkhd->bqhd", p, v)



def trans(q, k, v, bias):
  q, k, v = (t.transpose(0, 2, 1, 3) for t in (q, k, v))
  l = jnp.matmul(q * (1 / np.sqrt(32.)), k.transpose(0, 1, 3, 2)) + bias[:, None, None, :]
  m = jnp.max(l, -1, keepdims=True)
  e = jnp.exp(l - m)
  o = jnp.matmul(e, v) / jnp.sum(e, -1, keepdims=True)
  return o.transpose(0, 2, 1, 3)



def sdpa(q, k, v, bias):
  return jax.nn.dot_product_attention(q, k, v, bias=bias[:, None, None, :])



def chunked(q, k, v, bias):
  c = min(128, S)
  qs = q.reshape(B, S // c, c, H, D).transpose(1, 0, 2, 3, 4)
  return jax.lax.map(lambda qc: trans(qc, k, v, bias), qs).transpose(1, 0, 2, 3, 4).reshape(B, S, H, D)



def rowmap(q, k, v, bias):
  return jax.lax.map(lambda a: cur(a[0][None], a[1][None], a[2][None], a[3][None])[0], (q, k, v, bias))



def timeit(f, *a, n=5):
  f = jax.jit(f); jax.block_until_ready(f(*a))
  ts = []
  for _ in range(n):
    t = time.perf_counter(); jax.block_until_ready(f(*a)); ts.append(time.perf_counter() - t)
  return min(ts), f(*a)

ref = None
for name, f in [("einsum(cur)", cur), ("transposed", trans), ("jax.nn.dpa", sdpa), ("chunked128", chunked), ("rowmap", rowmap)]:
  t, o = timeit(f, q, k, v, bias)
  ref = o if ref is None else ref
  print(f"{name:12s} {t*1e3:8.1f} ms  maxdiff {float(jnp.abs(o-ref).max()):.1e}")
try:
  import torch; torch.set_num_threads(1)
  tq, tk, tv = (torch.from_numpy(np.array(t)).transpose(1, 2).contiguous() for t in (q, k, v))
  tb = torch.zeros(B, 1, 1, S)
  with torch.inference_mode():
    for _ in range(2): torch.nn.functional.scaled_dot_product_attention(tq, tk, tv, attn_mask=tb)
    ts = []
    for _ in range(5):
      t = time.perf_counter(); torch.nn.functional.scaled_dot_product_attention(tq, tk, tv, attn_mask=tb); ts.append(time.perf_counter() - t)
  print(f"torch sdpa   {min(ts)*1e3:8.1f} ms")
except ImportError:
  pass
