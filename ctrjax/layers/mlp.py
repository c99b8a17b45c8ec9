"""MLP tower and activations (FuxiCTR order per hidden layer: Dense -> [BatchNorm] -> act -> [Dropout])."""
from __future__ import annotations

import dataclasses
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


DICE_VARIANTS = ("paper", "batch_stats")


EPSILON_PLACEMENTS = ("inside_sqrt", "outside_sqrt")


class Dice(nn.Module):
  """Dice (DIN paper eq. 9): f(s) = p(s)·s + (1 − p(s))·α·s with the control function
  p(s) = σ((s − E[s]) / (√Var[s] + ε)) as eq. 9 prints it (``epsilon_placement='outside_sqrt'``,
  activation name ``dice_eq9``), or p(s) = σ((s − E[s]) / √(Var[s] + ε)), the batch-normalisation
  form of the official codes and FuxiCTR (``'inside_sqrt'``, activation ``dice``, our default). With
  ε = 1e-8 the two differ only where Var[s] is tiny.

  Statistics are per channel over every other axis (for [B, T, H] attention inputs: over B·T,
  padding included, as FuxiCTR/DeepCTR). variant 'paper' (DIN paper §5.2; FuxiCTR): mini-batch
  statistics in training, moving averages (momentum 0.99) at evaluation; 'batch_stats' (the DIEN
  official code): mini-batch statistics at evaluation too. α per channel, initialised to 0; no
  affine scale/shift inside p. A batch of identical rows has Var = 0 and gives p = 0.5, not NaN.
  """
  variant: str = "paper"
  epsilon: float = 1e-8              # the paper's ε (FuxiCTR uses 1e-9)
  momentum: float = 0.99
  epsilon_placement: str = "inside_sqrt"

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    if self.variant not in DICE_VARIANTS:
      raise ValueError(f"Dice variant={self.variant!r}; choose from {DICE_VARIANTS}")
    if self.epsilon_placement not in EPSILON_PLACEMENTS:
      raise ValueError(f"Dice epsilon_placement={self.epsilon_placement!r}; choose from {EPSILON_PLACEMENTS}")
    use_running_average = not train and self.variant == "paper"
    if self.epsilon_placement == "inside_sqrt":
      normalized = nn.BatchNorm(use_running_average=use_running_average, momentum=self.momentum,
                                epsilon=self.epsilon, use_bias=False, use_scale=False,
                                name="statistics")(x)
    else:
      mean, var = _moments(x, use_running_average, self.momentum, self)
      normalized = (x - mean) / (jnp.sqrt(var) + self.epsilon)
    p = jax.nn.sigmoid(normalized)
    alpha = self.param("alpha", nn.initializers.zeros, (x.shape[-1],))
    return p * x + (1.0 - p) * alpha * x


def _moments(x: jax.Array, use_running_average: bool, momentum: float, module: nn.Module):
  """Per-channel (mean, variance) of x over every other axis, or the running averages, which
  training updates with ``momentum`` (kept in 'batch_stats' as BatchNorm keeps them)."""
  channels = (x.shape[-1],)
  ra_mean = module.variable("batch_stats", "mean", lambda: jnp.zeros(channels, x.dtype))
  ra_var = module.variable("batch_stats", "var", lambda: jnp.ones(channels, x.dtype))
  if use_running_average:
    return ra_mean.value, ra_var.value
  axes = tuple(range(x.ndim - 1))
  mean = jnp.mean(x, axis=axes)
  var = jnp.mean(jnp.square(x - mean), axis=axes)
  if not module.is_initializing() and module.is_mutable_collection("batch_stats"):
    ra_mean.value = momentum * ra_mean.value + (1 - momentum) * mean
    ra_var.value = momentum * ra_var.value + (1 - momentum) * var
  return mean, var


_PLAIN = {"relu": nn.relu, "sigmoid": nn.sigmoid, "tanh": jnp.tanh, "leaky_relu": nn.leaky_relu,
          "identity": lambda x: x}
ACTIVATIONS = (*_PLAIN, "prelu", "dice", "dice_eq9")


def apply_activation(name: str, x: jax.Array, train: bool) -> jax.Array:
  """Applies the activation ``name``; called inside a compact module, so parametric ones (PReLU,
  Dice) become child modules with their own parameters (one per layer)."""
  if name == "prelu":
    return PReLU()(x)
  if name == "dice":
    return Dice()(x, train)
  if name == "dice_eq9":
    return Dice(epsilon_placement="outside_sqrt")(x, train)
  if name in _PLAIN:
    return _PLAIN[name](x)
  raise ValueError(f"unknown activation {name!r}; choose from {sorted(ACTIVATIONS)}")


DENSE_INITIALIZERS = {
    "xavier_normal": nn.initializers.xavier_normal(),       # FuxiCTR's Dense kernels, our default
    # PyTorch's nn.Linear default, Kaiming-uniform with a = √5: U(±1/√fan_in) (biases stay 0 here)
    "torch_linear": nn.initializers.variance_scaling(1 / 3, "fan_in", "uniform"),
    "truncated_normal": nn.initializers.truncated_normal(0.02),   # the MIAN paper's (§4.3) std 0.02
}
XAVIER = DENSE_INITIALIZERS["xavier_normal"]


def dense_initializer(name: str, field: str) -> nn.initializers.Initializer:
  """The Dense kernel initialiser called ``name``; a ValueError naming the config ``field`` otherwise."""
  if name not in DENSE_INITIALIZERS:
    raise ValueError(f"{field}={name!r}; choose from {sorted(DENSE_INITIALIZERS)}")
  return DENSE_INITIALIZERS[name]


class MLP(nn.Module):
  """Hidden layers then, if ``output_dim`` is set, a final linear layer."""
  hidden: Sequence[int]
  activation: str = "relu"
  dropout: float = 0.0
  batch_norm: bool = False
  output_dim: int | None = None
  kernel_init: nn.initializers.Initializer = XAVIER
  batch_norm_momentum: float = 0.99    # running-average decay (flax/Keras); PyTorch's momentum 0.1 = 0.9

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    for width in self.hidden:
      x = nn.Dense(width, kernel_init=self.kernel_init)(x)
      if self.batch_norm:
        x = nn.BatchNorm(use_running_average=not train, momentum=self.batch_norm_momentum)(x)
      x = apply_activation(self.activation, x, train)
      if self.dropout:
        x = nn.Dropout(self.dropout, deterministic=not train)(x)
    if self.output_dim is not None:
      x = nn.Dense(self.output_dim, kernel_init=self.kernel_init)(x)
    return x


@dataclasses.dataclass(frozen=True)
class DNN:
  """A model's MLP tower (FuxiCTR's DNN): per width in ``hidden``, Dense -> [BatchNorm] -> activation
  -> [Dropout]. Every model with a tower holds one as its field ``dnn`` (config ``model.dnn``); an
  empty ``hidden`` means no hidden layer (in AutoInt, DCN and xDeepFM: no DNN at all). Frozen, so it
  can be a module field's default; invalid values raise a ValueError naming ``model.dnn.<field>``."""
  hidden: tuple[int, ...] = ()
  activation: str = "relu"
  dropout: float = 0.0
  batch_norm: bool = False
  batch_norm_momentum: float = 0.99    # BatchNorm running-average decay (PyTorch's momentum 0.1 = 0.9)
  kernel_init: str = "xavier_normal"   # a DENSE_INITIALIZERS name; 'torch_linear': PyTorch's nn.Linear

  def __post_init__(self):
    object.__setattr__(self, "hidden", tuple(self.hidden))
    if not all(isinstance(w, int) and w > 0 for w in self.hidden):
      raise ValueError(f"model.dnn.hidden={self.hidden!r}: expected positive integer widths")
    if self.activation not in ACTIVATIONS:
      raise ValueError(f"model.dnn.activation={self.activation!r}; choose from {sorted(ACTIVATIONS)}")
    if not 0.0 <= self.dropout < 1.0:
      raise ValueError(f"model.dnn.dropout={self.dropout!r}: expected a rate in [0, 1)")
    if not 0.0 <= self.batch_norm_momentum < 1.0:
      raise ValueError(f"model.dnn.batch_norm_momentum={self.batch_norm_momentum!r}: "
                       f"expected a decay in [0, 1)")
    dense_initializer(self.kernel_init, "model.dnn.kernel_init")

  def tower(self, output_dim: int | None = None, name: str = "mlp") -> MLP:
    """The MLP of these settings (built inside a compact module, it becomes its submodule ``name``)."""
    return MLP(self.hidden, self.activation, self.dropout, self.batch_norm, output_dim,
               dense_initializer(self.kernel_init, "model.dnn.kernel_init"), self.batch_norm_momentum,
               name=name)
