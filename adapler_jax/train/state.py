"""The train state shared by every phase: step, params, optimizer state and a PRNG key."""

from __future__ import annotations

from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax

Array = jax.Array


@flax.struct.dataclass
class TrainState:
  """`rng` holds raw key data (uint32), so checkpoints store it as a plain array; `key_impl`
  names its implementation (threefry2x32, rbg, ...), static."""

  step: Array
  params: Any
  opt_state: Any
  rng: Array
  key_impl: str = flax.struct.field(pytree_node=False, default="threefry2x32")

  def step_key(self) -> Array:
    """The PRNG key of this step (dropout), a pure function of (rng, step)."""
    key = jax.random.wrap_key_data(self.rng, impl=self.key_impl)
    return jax.random.fold_in(key, self.step)


def create_train_state(params, optimizer: optax.GradientTransformation,
                       rng: Array) -> TrainState:
  """A step-0 state; `rng` is a `jax.random.key`.

  The params and the key are copied: train steps donate the state, which must not delete
  arrays the caller still holds (e.g. a pre-trained backbone reused by a later phase, or
  the key it splits next).
  """
  params = jax.tree.map(jnp.copy, params)
  return TrainState(jnp.zeros((), jnp.int32), params, optimizer.init(params),
                    jnp.copy(jax.random.key_data(rng)), str(jax.random.key_impl(rng)))
