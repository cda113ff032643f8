"""The dense layers' matmul, with a kernel gradient laid out for XLA's CPU matmul library.

`jax.grad` of `x @ kernel` forms the kernel gradient as a `dot` that contracts the token axis,
the leading axis of both the saved input x (tokens, in) and the output cotangent g
(tokens, out). XLA:CPU then picks a layout in which both operands are transposed, and
such a dot does not go to its fast matmul library (YNNPACK); it runs at about half the
speed of the forward matmuls of the same size (MiniLM's feed-forward kernels: 250 ms against
125 ms on one core), and the kernel gradients were 40 % of a fine-tuning step's time.

`dot_general` is `lax.dot_general` with a custom JVP whose tangent contracts x through
a transposed copy of its own (`optimization_barrier` stops XLA from folding the transpose
back into the dot); reverse mode transposes that tangent into the kernel gradient, a plain
(in, tokens) x (tokens, out) matmul. The forward, the input gradient and the values are
those of `lax.dot_general`, and forward mode (`jax.jvp`, `jax.jacfwd`, Hessian-vector
products) goes through it too.

Only what is traced inside `kernel_gradient_layout()` takes it, on a CPU backend: the
library's own training gradients (`classifier.make_finetune_step`,
`adapler_step.adapler_grads`, `lat_step.sandwich_grads`) enter it. Everything else traces
`lax.dot_general` itself, so a user's forward-mode tangents keep the plain layout. A
function jitted inside the block keeps the layout in its cached program when called
after it: the same values, a different kernel-gradient layout.
`ADAPLER_PLAIN_DOTS=1` turns the layout off everywhere.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import os

import jax

Array = jax.Array


def _contract_last(x: Array, kernel: Array, precision) -> Array:
  return jax.lax.dot_general(x, kernel, (((x.ndim - 1,), (0,)), ((), ())), precision=precision)


@functools.partial(jax.custom_jvp, nondiff_argnums=(2,))
def _matmul(x: Array, kernel: Array, precision) -> Array:
  return _contract_last(x, kernel, precision)


@_matmul.defjvp
def _matmul_jvp(precision, primals, tangents):
  """d(x k) = dx k + x dk, the second term as xt^T dk over xt = x^T, a copy of its own:
  transposed for the kernel gradient it is xt g, a plain matmul."""
  x, kernel = primals
  dx, dkernel = tangents
  out = _contract_last(x, kernel, precision)
  xt = jax.lax.optimization_barrier(x.reshape(-1, x.shape[-1]).T)  # (in, tokens), its own.
  x_dk = jax.lax.dot_general(xt, dkernel, (((0,), (0,)), ((), ())), precision=precision)
  return out, _contract_last(dx, kernel, precision) + x_dk.reshape(out.shape)


_LAYOUT = contextvars.ContextVar("kernel_gradient_layout", default=False)


@contextlib.contextmanager
def kernel_gradient_layout():
  """Dense layers traced inside take the CPU kernel-gradient layout."""
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

