"""Layers of the Transformer-over-behaviours models: FESeq, SASRec, TiSASRec, DMR (FESeq paper §3).

Tokens (``align_fields``): each behaviour field with ids is one column of a behaviour token and is
paired with the candidate field on the same embedding table: an item field, else a context field.
MovieLens' hist_hour and hist_weekday (prep option sequence_fields='feseq') pair with the context
fields hour and weekday, i.e. with the candidate's own time, so the candidate becomes one more token
e_c appended after the newest behaviour: [e_1 ; ... ; e_T ; e_c], L = T + 1 (left padding keeps e_c
last). User fields and the item and context fields without a behaviour counterpart are the
"non-sequence" fields. A numeric behaviour field (the time gap) is not a token column: the models
exclude it by name and read it themselves.

Masks (ctrjax/layers/transformer.py, ``attention_mask``): causal, query i sees itself and older
tokens; the candidate (last) sees the whole history, a behaviour never sees the candidate. Outputs at
padded slots are meaningless and every pooling here ignores them.
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from ctrjax.data.schema import Field, Schema
from ctrjax.layers.attention import LocalActivationUnit, masked_softmax
from ctrjax.layers.embedding import masked_mean, masked_sum
from ctrjax.layers.mlp import XAVIER, PReLU

POOLINGS = ("target", "mean", "sum", "concat")
POOLING_SCORES = ("bilinear", "dot", "din")


def _identity(key, shape, dtype=jnp.float32):
  del key
  return jnp.eye(*shape, dtype=dtype)


@dataclasses.dataclass(frozen=True)
class AlignedFields:
  """The fields of a behaviour-token model, in schema order."""
  behavior: tuple[Field, ...]      # token columns
  candidate: tuple[Field, ...]     # the candidate's field on each behaviour field's table
  others: tuple[Field, ...]        # non-sequence fields: user, unaligned item and context fields

  def field_stacks(self, emb: dict) -> tuple[jax.Array, jax.Array]:
    """(behaviours [B, T, F_s, d], candidate [B, F_s, d]), one slot per token column."""
    behaviors = jnp.stack([emb["behavior"][f.name] for f in self.behavior], axis=2)
    return behaviors, jnp.stack([emb[f.group][f.name] for f in self.candidate], axis=1)

  def tokens(self, emb: dict) -> tuple[jax.Array, jax.Array]:
    """(behaviour tokens [B, T, F_s·d], candidate token [B, F_s·d]): the columns concatenated."""
    behaviors, candidate = self.field_stacks(emb)
    return behaviors.reshape(*behaviors.shape[:2], -1), candidate.reshape(candidate.shape[0], -1)

  def other_vectors(self, emb: dict) -> list[jax.Array]:
    """The non-sequence fields' embeddings, each [B, d]."""
    return [emb[f.group][f.name] for f in self.others]


def without_fields(schema: Schema, names: Sequence[str]) -> Schema:
  """``schema`` minus the fields ``names`` (those present), e.g. the time gap before embedding."""
  return Schema(tuple(f for f in schema.fields if f.name not in names))


def align_fields(schema: Schema, exclude: Sequence[str] = ()) -> AlignedFields:
  """Pairs every behaviour field (but ``exclude``) with the first item field, else the first context
  field, on its embedding table; a behaviour field with neither, or a numeric one, is an error."""
  behaviors = [f for f in schema.group("behavior") if f.name not in exclude]
  if not behaviors:
    raise ValueError("the dataset has no behaviour fields to build tokens from")
  by_table: dict[str, Field] = {}
  for f in (*schema.group("item"), *schema.group("context")):
    if f.has_ids:
      by_table.setdefault(f.table, f)
  candidate = []
  for f in behaviors:
    if not f.has_ids:
      raise ValueError(f"behaviour field {f.name!r} is numeric: only the time gap "
                       f"(model.time_gap_field) may be, every other behaviour field needs ids")
    if f.table not in by_table:
      raise ValueError(f"behaviour field {f.name!r} (table {f.table!r}) has no candidate field on the same "
                       f"table among the item and context fields")
    candidate.append(by_table[f.table])
  used = {f.name for f in candidate}
  others = tuple(f for g in ("user", "item", "context") for f in schema.group(g)
                 if f.name not in used and f.name not in exclude)
  return AlignedFields(tuple(behaviors), tuple(candidate), others)


def with_candidate(behaviors: jax.Array, candidate: jax.Array, mask: jax.Array):
  """(tokens [B, T + 1, ...] with the candidate last, valid [B, T + 1]: the candidate always valid)."""
  tokens = jnp.concatenate([behaviors, candidate[:, None]], axis=1)
  return tokens, jnp.concatenate([mask, jnp.ones((mask.shape[0], 1), bool)], axis=1)


def reverse_positions(length: int) -> jax.Array:
  """Position id of each of ``length`` slots: its distance to the last slot (the candidate gets 0,
  the newest behaviour 1, ...), so with left padding a behaviour's id does not depend on how long
  the history is (FESeq §3.3, "reverse time order")."""
  return jnp.arange(length - 1, -1, -1)


def time_buckets(gap: jax.Array, num_buckets: int, width: float = 1.0, log_base: float = 0.0) -> jax.Array:
  """Linear time-interval bucket clip(⌊gap / width⌋, 0, num_buckets − 1) (FESeq §3.3); with
  log_base > 1, clip(⌊log_b(gap / width + 1)⌋, ...) (the official code's time_log_base)."""
  steps = jnp.maximum(gap / width, 0.0)
  if log_base:
    steps = jnp.log1p(steps) / jnp.log(log_base)
  return jnp.minimum(jnp.floor(steps), num_buckets - 1).astype(jnp.int32)


class FieldInteractionLayer(nn.Module):
  """FESeq's interacting layer over fields x [..., F, d] -> ([..., F, d], attention [..., H, F, F]).

  Q, K, V = X W_Q, X W_K, X W_V (d -> d, bias-free; H heads of d/H); A = softmax(Q Kᵀ / √(d/H));
  O = ReLU(LN(A V + X)) (FuxiCTR MultiHeadSelfAttention with identity residual, as the official code
  calls it; layer_norm=False gives the paper's eq. 1-3, O = ReLU(A V + X)). attention_dropout acts on A;
  the returned attention is before it. Leading axes (batch, position) share the weights.
  """
  num_heads: int = 1
  attention_dropout: float = 0.0
  layer_norm: bool = True
  kernel_init: nn.initializers.Initializer = XAVIER

  @nn.compact
  def __call__(self, x, train: bool):
    dim = x.shape[-1]
    heads = (*x.shape[:-1], self.num_heads, dim // self.num_heads)
    q, k, v = (nn.Dense(dim, use_bias=False, kernel_init=self.kernel_init, name=name)(x).reshape(heads)
               for name in ("query", "key", "value"))
    attention = jax.nn.softmax(jnp.einsum("...mhc,...khc->...hmk", q, k) / jnp.sqrt(heads[-1]), axis=-1)
    dropped = nn.Dropout(self.attention_dropout, deterministic=not train)(attention)
    out = jnp.einsum("...hmk,...khc->...mhc", dropped, v).reshape(x.shape) + x
    if self.layer_norm:
      out = nn.LayerNorm(name="layer_norm")(out)
    return nn.relu(out), attention


class TargetAttentionPool(nn.Module):
  """FESeq's attention pooling (§3.4, eq. 9-12; official PoolingLayer 'weighted_sum').

  q = PReLU(W^q query), K = PReLU(W^K X), V = PReLU(W^V X) (bias-free, to hidden_dim d_h; then
  dropout), scores per token:
    bilinear  g = qᵀ W K_t / √d_h, W [d_h, d_h] initialised to the identity (eq. 12);
    dot       g = qᵀ K_t / √d_h (eq. 16);
    din       g = MLP([q ; K_t ; q − K_t ; q ∘ K_t]) (Dice; eq. 17 as the official code builds it);
  scale=False drops the √d_h (bilinear and dot). α = masked softmax over the valid tokens,
  u = PReLU(Dense(Σ_t Drop(α_t) V_t)) back to X's width (eq. 10). Returns (u [B, D], α [B, L]).
  """
  score: str = "bilinear"
  scale: bool = True
  hidden_dim: int = 128
  din_hidden: Sequence[int] = (512, 256, 128)
  dropout: float = 0.0
  attention_dropout: float = 0.0
  kernel_init: nn.initializers.Initializer = XAVIER

  @nn.compact
  def __call__(self, query, tokens, valid, train: bool):
    if self.score not in POOLING_SCORES:
      raise ValueError(f"pooling score={self.score!r}; choose from {POOLING_SCORES}")
    drop = nn.Dropout(self.dropout, deterministic=not train)

    def project(x, name):
      x = nn.Dense(self.hidden_dim, use_bias=False, kernel_init=self.kernel_init, name=name)(x)
      return drop(PReLU(name=f"{name}_prelu")(x))

    q, k, v = project(query, "query"), project(tokens, "key"), project(tokens, "value")
    if self.score == "din":
      _, alpha = LocalActivationUnit(tuple(self.din_hidden), "dice", weighting="softmax",
                                     kernel_init=self.kernel_init, name="din")(q, k, valid, train)
    else:
      if self.score == "bilinear":
        q = q @ self.param("bilinear", _identity, (self.hidden_dim, self.hidden_dim))
      scores = jnp.einsum("bd,bld->bl", q, k)
      if self.scale:
        scores = scores / jnp.sqrt(self.hidden_dim)
      alpha = masked_softmax(scores, valid)
    dropped = nn.Dropout(self.attention_dropout, deterministic=not train)(alpha)
    pooled = jnp.sum(dropped[..., None] * v, axis=1)
    out = nn.Dense(tokens.shape[-1], kernel_init=self.kernel_init, name="output")(pooled)
    return PReLU(name="output_prelu")(out), alpha


def pool_tokens(x: jax.Array, valid: jax.Array, pooling: str) -> jax.Array:
  """[B, L, D] -> [B, D] ([B, L·D] for 'concat', padded slots zeroed): the candidate's (last)
  output, or the mean / sum over the valid tokens."""
  if pooling == "target":
    return x[:, -1]
  if pooling == "mean":
    return masked_mean(x, valid, axis=1)
  if pooling == "sum":
    return masked_sum(x, valid, axis=1)
  if pooling == "concat":
    return jnp.where(valid[..., None], x, 0.0).reshape(x.shape[0], -1)
  raise ValueError(f"sequence pooling={pooling!r}; choose from {POOLINGS}")
