"""FINAL, factorized interaction layers (Zhu et al., SIGIR'23), as its official code (FuxiCTR
model_zoo/FINAL, by the paper's authors; this follows that code).

A FINAL block replaces each Dense layer of an MLP by a ``FactorizedInteraction`` layer
(h = Dense(x) = [h₂, h₁] -> [h₂, h₁ ∘ h₂], ``residual_type='concat'``; or h₂ + h₁ ∘ h₂, 'sum'),
then [BatchNorm] -> activation (none by default: the products are the non-linearity) ->
[dropout]. Two blocks (``block_type='2B'``), each ending in a linear logit:
  y₁ = block₁(⊕ FieldGate(E)), FieldGate(E) = [E ; E ∘ G], G = Dense over the field axis
       (F -> F per embedding dimension, weights 0 and bias 1 at init, so G starts at 1),
       ``field_gate=False`` feeds ⊕ E instead;
  y₂ = block₂(⊕ E);  logit = (y₁ + y₂) / 2.
Block losses (self-knowledge distillation, the paper's "supervise the outputs of two blocks"): in
training out["aux_loss"] = block_loss_weight · [BCE(y₁, sg(σ(logit))) + BCE(y₂, sg(σ(logit)))],
each a mean over the rows with batch["weight"] > 0 like the main loss, targets the ensemble's
probability with the gradient stopped (official ``add_loss``: weight 1 each, no temperature).
The train step adds it to the main BCE. block_loss_weight=0 turns them off (what other libraries
silently do); '1B' has one block, logit = y₁ and no block loss.
Uncertainty: the SIGIR short paper is not in ../shared; equations and weights follow the official
code. BatchNorm momentum 0.99 by default (batch_norm_momentum; as the repo's MLP; PyTorch's 0.1 = 0.9).
"""
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from ctrjax.data.schema import Schema
from ctrjax.layers import FeatureEmbedding, apply_activation
from ctrjax.layers.interaction import FactorizedInteraction, field_vectors

BLOCK_TYPES = ("1B", "2B")


class FieldGate(nn.Module):
  """[E ; E ∘ G] [B, 2F, d] with G = Dense over the field axis of E [B, F, d] (init: G = 1)."""

  @nn.compact
  def __call__(self, fields: jax.Array) -> jax.Array:
    gates = nn.Dense(fields.shape[1], kernel_init=nn.initializers.zeros, bias_init=nn.initializers.ones,
                     name="dense")(fields.swapaxes(1, 2)).swapaxes(1, 2)
    return jnp.concatenate([fields, fields * gates], axis=1)


class FinalBlock(nn.Module):
  """FactorizedInteraction -> [BatchNorm] -> activation -> [Dropout] per width, then Dense(1)."""
  hidden: Sequence[int]
  residual_type: str = "concat"
  activation: str = "identity"
  dropout: float = 0.0
  batch_norm: bool = True
  batch_norm_momentum: float = 0.99       # BatchNorm running-average decay (PyTorch's 0.1 = 0.9)

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    for width in self.hidden:
      x = FactorizedInteraction(width, self.residual_type)(x)
      if self.batch_norm:
        x = nn.BatchNorm(use_running_average=not train, momentum=self.batch_norm_momentum)(x)
      x = apply_activation(self.activation, x, train)
      x = nn.Dropout(self.dropout, deterministic=not train)(x)
    return nn.Dense(1, kernel_init=nn.initializers.xavier_normal(), name="output")(x)[:, 0]


class Model(nn.Module):
  schema: Schema
  embed_dim: int = 16
  pooling: str = "mean"
  block_type: str = "2B"             # 1B | 2B
  field_gate: bool = True
  block1_hidden: Sequence[int] = (64, 64, 64)
  block2_hidden: Sequence[int] = (64, 64, 64)
  residual_type: str = "concat"      # concat | sum
  activation: str = "identity"
  dropout: float = 0.0
  batch_norm: bool = True
  batch_norm_momentum: float = 0.99       # BatchNorm running-average decay (PyTorch's 0.1 = 0.9)
  block_loss_weight: float = 1.0     # 0 = no block losses
  init_std: float = 0.02

  @nn.compact
  def __call__(self, batch: dict, train: bool = False) -> dict:
    if self.block_type not in BLOCK_TYPES:
      raise ValueError(f"model.block_type={self.block_type!r}; choose from {BLOCK_TYPES}")
    emb = FeatureEmbedding(self.schema, self.embed_dim, nn.initializers.truncated_normal(self.init_std),
                           name="embedding")(batch)
    fields = field_vectors(emb, batch, self.pooling)                            # [B, F, d]
    gated = FieldGate(name="field_gate")(fields) if self.field_gate else fields

    def block(name, hidden, x):
      return FinalBlock(hidden, self.residual_type, self.activation, self.dropout, self.batch_norm,
                        self.batch_norm_momentum, name=name)(x.reshape(x.shape[0], -1), train)

    y1 = block("block1", self.block1_hidden, gated)
    if self.block_type == "1B":
      return {"logit": y1}
    y2 = block("block2", self.block2_hidden, fields)
    logit = 0.5 * (y1 + y2)
    out = {"logit": logit}
    if train and self.block_loss_weight:
      target = jax.lax.stop_gradient(jax.nn.sigmoid(logit))
      weight = batch["weight"]
      per_row = optax.sigmoid_binary_cross_entropy(y1, target) + optax.sigmoid_binary_cross_entropy(y2, target)
      out["aux_loss"] = self.block_loss_weight * jnp.sum(per_row * weight) / jnp.maximum(jnp.sum(weight), 1.0)
    return out
