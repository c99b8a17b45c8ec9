"""Layers of the Transformer-over-behaviours models: FESeq, SASRec, TiSASRec, DMR (models.md §6, §2.6).

Tokens (``align_fields``): each behaviour field with ids is one column of a behaviour token and is
paired with the candidate field on the same embedding table: an item field, else a context field.
MovieLens' hist_hour and hist_weekday (prep option sequence_fields='feseq') pair with the context
fields hour and weekday, i.e. with the candidate's own time, so the candidate becomes one more token
e_c appended after the newest behaviour: [e_1 ; ... ; e_T ; e_c], L = T + 1 (left padding keeps e_c
last). User fields and the item and context fields without a behaviour counterpart are the
"non-sequence" fields. A numeric behaviour field (the time gap) is not a token column: the models
exclude it by name and read it themselves.

Masks (``attention_mask``; flax convention, True = may attend), FESeq.get_mask:
  allow[i, j] = (valid_j ∨ i = j) ∧ (¬causal ∨ j ≤ i).
A padded key is hidden from every other query, and the diagonal keeps a padded query's row
non-empty (no NaN). Causal: query i sees itself and older tokens; the candidate (last) sees the whole
history, a behaviour never sees the candidate. Outputs at padded slots are meaningless and every
pooling here ignores them.
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
from ctrjax.layers.mlp import PReLU, apply_activation

NORMS = ("none", "post_ln", "pre_ln")
POOLINGS = ("target", "mean", "sum", "concat")
POOLING_SCORES = ("bilinear", "dot", "din")
_xavier = nn.initializers.xavier_normal()


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


def attention_mask(valid: jax.Array, causal: bool) -> jax.Array:
  """allow [B, 1, L, L] from valid [B, L] (module docstring)."""
  length = valid.shape[-1]
  diagonal = jnp.eye(length, dtype=bool)
  allow = valid[:, None, None, :] | diagonal
  if causal:
    allow = allow & jnp.tril(jnp.ones((length, length), bool))
  return allow


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


class MaskedSelfAttention(nn.Module):
  """Multi-head self-attention over x [B, L, D] with an explicit mask allow [B, 1, L, L].

  e_ij = q_i · (k_j + K_ij) / √(D/H), α = masked softmax_j, z_i = Σ_j α_ij (v_j + V_ij), then an
  output projection. K_ij, V_ij (broadcastable to [B, L, L, D]) are optional per-pair terms added after the
  projections (TiSASRec's relative time and position embeddings); without them this is standard
  attention. Dropout (``attention_dropout``) acts on α. Returns (output, α [B, H, L, L] before
  dropout).
  """
  num_heads: int
  attention_dropout: float = 0.0
  use_bias: bool = True
  kernel_init: nn.initializers.Initializer = _xavier

  @nn.compact
  def __call__(self, x, allow, train: bool, key_terms=None, value_terms=None):
    b, length, width = x.shape
    heads = (b, length, self.num_heads, width // self.num_heads)

    def project(name):
      return nn.Dense(width, use_bias=self.use_bias, kernel_init=self.kernel_init, name=name)(x).reshape(heads)

    def per_pair(terms):
      return jnp.broadcast_to(terms, (b, length, length, width)).reshape(b, length, length, *heads[2:])

    q, k, v = project("query"), project("key"), project("value")
    scores = jnp.einsum("blhc,bmhc->bhlm", q, k)
    if key_terms is not None:
      scores = scores + jnp.einsum("blhc,blmhc->bhlm", q, per_pair(key_terms))
    alpha = masked_softmax(scores / jnp.sqrt(heads[-1]).astype(x.dtype), allow)
    dropped = nn.Dropout(self.attention_dropout, deterministic=not train)(alpha)
    z = jnp.einsum("bhlm,bmhc->blhc", dropped, v)
    if value_terms is not None:
      z = z + jnp.einsum("bhlm,blmhc->blhc", dropped, per_pair(value_terms))
    out = nn.Dense(width, use_bias=self.use_bias, kernel_init=self.kernel_init, name="out")(z.reshape(x.shape))
    return out, alpha


class SequenceTransformerBlock(nn.Module):
  """One Transformer block with an explicit attention mask (causal or not) over x [B, L, D].

  norm 'none' (FESeq eq. 7-8; official layer_norm=False): S = X + Drop(MHSA(X)), F = S + Drop(FFN(S));
  'post_ln' (FuxiCTR's BST/SASRec/TiSASRec block): S = LN(X + Drop(MHSA(X))), F = LN(S + Drop(FFN(S)));
  'pre_ln' (SASRec paper): S = X + Drop(MHSA(LN(X))), F = S + Drop(FFN(LN(S))); a stack of these
  needs a final LayerNorm. FFN = Dense(ffn_hidden, default D) -> activation -> Dense(D).
  key_terms / value_terms go to MaskedSelfAttention. Returns (F, attention weights [B, H, L, L]).
  """
  num_heads: int
  ffn_hidden: int | None = None
  ffn_activation: str = "leaky_relu"
  dropout: float = 0.0
  attention_dropout: float = 0.0
  norm: str = "none"
  kernel_init: nn.initializers.Initializer = _xavier

  @nn.compact
  def __call__(self, x, allow, train: bool, key_terms=None, value_terms=None):
    if self.norm not in NORMS:
      raise ValueError(f"transformer norm={self.norm!r}; choose from {NORMS}")
    width = x.shape[-1]
    attention = MaskedSelfAttention(self.num_heads, self.attention_dropout, kernel_init=self.kernel_init,
                                    name="attention")
    drop = nn.Dropout(self.dropout, deterministic=not train)

    def ffn(h):
      h = nn.Dense(self.ffn_hidden or width, kernel_init=self.kernel_init, name="ffn_hidden")(h)
      h = apply_activation(self.ffn_activation, h, train)
      return nn.Dense(width, kernel_init=self.kernel_init, name="ffn_out")(h)

    norm_attention = nn.LayerNorm(name="ln_attention") if self.norm != "none" else (lambda h: h)
    norm_ffn = nn.LayerNorm(name="ln_ffn") if self.norm != "none" else (lambda h: h)
    if self.norm == "pre_ln":
      attended, alpha = attention(norm_attention(x), allow, train, key_terms, value_terms)
      s = x + drop(attended)
      return s + drop(ffn(norm_ffn(s))), alpha
    attended, alpha = attention(x, allow, train, key_terms, value_terms)
    s = norm_attention(x + drop(attended))
    return norm_ffn(s + drop(ffn(s))), alpha


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
  kernel_init: nn.initializers.Initializer = _xavier

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
  kernel_init: nn.initializers.Initializer = _xavier

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
