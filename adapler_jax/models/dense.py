"""The dense layers' matmul, with a kernel gradient laid out for XLA's CPU matmul library.

`jax.grad` of `x @ kernel` forms the kernel gradient as a `dot` that contracts the token axis,
the leading axis of both the saved input x (tokens, in) and the output cotangent g
(tokens, out). XLA:CPU then picks a layout in which both operands are transposed, and
such a dot does not go to its fast matmul library (YNNPACK); it runs at about half the
speed of the forward matmuls of the same size (MiniLM's feed-forward kernels: 250 ms against
125 ms on one core), and the kernel gradients were 40 % of a fine-tuning step's time.

`dot_general` is `lax.dot_general` with a custom VJP whose kernel gradient transposes x
into an array of its own first (`optimization_barrier` stops XLA from folding the
transpose back into the dot), so that the product is a plain (in, tokens) x (tokens, out)
matmul. The forward, the input gradient and the values are those of `lax.dot_general`.

Only what is traced inside `kernel_gradient_layout()` takes it, on a CPU backend: the
library's own training gradients (`classifier.make_finetune_step`,
`adapler_step.adapler_grads`, `lat_step.sandwich_grads`) enter it. Everything else, the
public forwards under a user's `jax.jvp`, `jax.jacfwd` or `jax.grad` included, traces
`lax.dot_general` itself (a custom VJP rules out forward-mode differentiation).
`ADAPLER_PLAIN_DOTS=1` turns the layout off everywhere.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import os

import jax

Array = jax.Array


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _matmul(x: Array, kernel: Array, precision) -> Array:
  return jax.lax.dot_general(x, kernel, (((x.ndim - 1,), (0,)), ((), ())), precision=precision)


def _matmul_fwd(x, kernel, precision):
  return _matmul(x, kernel, precision), (x, kernel)


def _matmul_bwd(precision, res, g):
  x, kernel = res
  dx = jax.lax.dot_general(g, kernel, (((g.ndim - 1,), (1,)), ((), ())), precision=precision)
  xt = jax.lax.optimization_barrier(x.reshape(-1, x.shape[-1]).T)  # (in, tokens), its own.
  dk = jax.lax.dot_general(xt, g.reshape(-1, g.shape[-1]), (((1,), (0,)), ((), ())),
                           precision=precision)
  return dx.astype(x.dtype), dk.astype(kernel.dtype)


_matmul.defvjp(_matmul_fwd, _matmul_bwd)


_LAYOUT = contextvars.ContextVar("kernel_gradient_layout", default=False)


@contextlib.contextmanager
def kernel_gradient_layout():
  """Dense layers traced inside take the CPU kernel-gradient layout (reverse mode only)."""
  token = _LAYOUT.set(True)
  try:
    yield
  finally:
    _LAYOUT.reset(token)


def cpu_kernel_gradients() -> bool:
  """Whether dense layers take the CPU kernel-gradient layout: inside
  `kernel_gradient_layout()` on a CPU backend, unless `ADAPLER_PLAIN_DOTS=1`."""
  return (_LAYOUT.get() and jax.default_backend() == "cpu"
          and os.environ.get("ADAPLER_PLAIN_DOTS") != "1")


def dot_general(lhs: Array, rhs: Array, dimension_numbers, precision=None,
                preferred_element_type=None) -> Array:
  """`lax.dot_general` for `flax.linen.Dense` (`dot_general=`): (..., in) x (in, out)."""
  (lc, rc), (lb, rb) = dimension_numbers
  if (tuple(lc), tuple(rc), tuple(lb), tuple(rb)) != ((lhs.ndim - 1,), (0,), (), ()) or (
      preferred_element_type is not None) or not cpu_kernel_gradients():
    return jax.lax.dot_general(lhs, rhs, dimension_numbers, precision=precision,
                               preferred_element_type=preferred_element_type)
  return _matmul(lhs, rhs, precision)

