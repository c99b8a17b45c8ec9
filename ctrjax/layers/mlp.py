"""MLP tower and activations (FuxiCTR order per hidden layer: Dense -> [BatchNorm] -> act -> [Dropout])."""
from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp


class PReLU(nn.Module):
  """max(0, x) + a * min(0, x) with a per-channel slope ``a`` (FuxiCTR/DIEN init 0.1)."""
  init_slope: float = 0.1

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    a = self.param("slope", nn.initializers.constant(self.init_slope), (x.shape[-1],))
    return jnp.where(x >= 0, x, a * x)


_PLAIN = {"relu": nn.relu, "sigmoid": nn.sigmoid, "tanh": jnp.tanh, "leaky_relu": nn.leaky_relu,
          "identity": lambda x: x}


def activation(name: str):
  """Activation by config name; parametric ones are fresh modules (own parameters per layer)."""
  if name == "prelu":
    return PReLU()
  if name in _PLAIN:
    return _PLAIN[name]
  raise ValueError(f"unknown activation {name!r}; choose from {sorted([*_PLAIN, 'prelu'])}")


class MLP(nn.Module):
  """Hidden layers then, if ``output_dim`` is set, a final linear layer."""
  hidden: Sequence[int]
  activation: str = "relu"
  dropout: float = 0.0
  batch_norm: bool = False
  output_dim: int | None = None
  kernel_init: nn.initializers.Initializer = nn.initializers.xavier_normal()

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    for width in self.hidden:
      x = nn.Dense(width, kernel_init=self.kernel_init)(x)
      if self.batch_norm:
        x = nn.BatchNorm(use_running_average=not train)(x)
      x = activation(self.activation)(x)
      if self.dropout:
        x = nn.Dropout(self.dropout, deterministic=not train)(x)
    if self.output_dim is not None:
      x = nn.Dense(self.output_dim, kernel_init=self.kernel_init)(x)
    return x
