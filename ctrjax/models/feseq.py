"""FESeq: Feature Interaction-Enhanced Sequential Transformer (Liu et al., 2024).

Fields (ctrjax/layers/sequence.py, align_fields): sequence fields = the behaviour fields with ids;
the target token holds the candidate's field on each one's table (an item field, else a context
field: on MovieLens with dataset.sequence_fields='feseq', hist_hour and hist_weekday pair with the
context fields hour and weekday, the candidate's own time). Non-sequence fields e_ns = user fields
and the item/context fields without a behaviour counterpart (item_year, month). The numeric
behaviour field ``time_gap_field`` is read for the time intervals only.

Embedding layer: E_s [B, L, F_s, d] = [behaviours (left-padded, oldest -> newest) ; target],
L = T + 1, the target LAST; E_ns [B, F_n, d].
Interacting layer (§3.2, eq. 1-3), weights shared by every position:
  E_in = [E_s ; broadcast_L(E_ns)] [B, L, F_s + F_n, d]  -> M FieldInteractionLayers:
  E^i = ReLU(LN(softmax(Q Kᵀ / √d) V + E^{i−1})),  Q, K, V = E^{i−1} W_{Q,K,V}.
Sequence refiner (§3.3, eq. 4-8): X_l = flatten(E^M_l) ⊕ P[L−1−l] ⊕ Ti[bucket(Δt_l)] (concatenated,
  as the official code; eq. 4 writes a sum), P by reverse position (target 0, newest behaviour 1),
  Δt_l = the behaviour's time gap (target 0), bucket = clip(⌊Δt / width⌋, 0, num_time_buckets − 1).
  num_layers blocks: S = X + Drop(MHSA(X, mask)), F = S + Drop(FFN_LeakyReLU(S)), mask
  allow[i, j] = (valid_j ∨ i = j) ∧ (¬causal ∨ j ≤ i).
Sequence pooling (§3.4, eq. 9-12): query = flatten(N FieldInteractionLayers over the target-item
  fields in a separate output embedding); q, K, V = PReLU(W·), α = masked softmax(qᵀ W K_t / √d_h)
  with W = I at init; u = PReLU(Dense(Σ α_t V_t)). Or target pooling F_L, or the masked mean.
Output layer: z = [E_ns flattened ; u] -> MLP 1024-512-256 LeakyReLU -> one logit.

Decisions (the paper leaves these open, or the official code differs; each a field):
  * Interacting layer: FuxiCTR MultiHeadSelfAttention as the official code calls it: 1 head, d -> d
    bias-free Q/K/V, identity residual, scale 1/√d (eq. 2), LayerNorm before the ReLU
    (interaction_layer_norm=False gives eq. 3 exactly), dropout interaction_dropout = 0.1 on the
    attention weights.
  * interact_non_sequence=False (Table 5, "w/o Non-seq Feats"): the interacting layers see E_s
    only; broadcast E_ns is still concatenated to each token after them, so only the interaction's
    input changes. interaction_layers=0 and target_interaction_layers=0 is Table 4's "w/o Int"
    (official FESeq_6: no interaction on either side).
  * Target-item fields (the pooling query): every item-group field, looked up in a second embedding
    (params["target_item"]["embedding"]; the paper's output item embedding layer) that no embedding
    regulariser sees (official: output_emb_layer is not regularised). Context fields are not in it.
  * Positions and time intervals are concatenated d-wide tables (official; eq. 4 adds them).
    Both tables are truncated-normal(init_std) like the embeddings (official: PyTorch N(0, 1)).
    Padded slots get bucket 0 (official: the clipped maximum); they are masked anyway.
  * Time unit: the gap field's (MovieLens prep: minutes), time_bucket_width units per bucket, so the
    default 4,001 buckets resolve one minute up to 4,000 minutes (2.8 days). time_log_base > 1
    gives the official log buckets ⌊log_b(Δt + 1)⌋ (FESeq_5 uses base 2 together with no position).
  * Transformer: 8 heads over the whole token, FFN width = token width, LeakyReLU, no LayerNorm
    (official FESeq_3: layer_norm=False; refiner_norm may choose 'post_ln' or 'pre_ln'),
    attention_dropout 0.1 on the attention weights, dropout (0) after attention and FFN, Q/K/V/out
    biases (PyTorch MultiheadAttention). Causal by default (the paper's finding, Table 7).
  * Pooling: per-channel PReLUs, one per projection and one on the output (official: one scalar
    PReLU shared by all four); 'din' scores use the shared DIN unit (MLP 512-256-128 Dice, no
    dropout in it, no √d_h); dropout on q, K, V (0) and attention_dropout on α.
  * Padding: the behaviour mask is batch["behavior"]["mask"]; the target is always valid, so an empty
    history pools the target alone.
  * Init: embeddings truncated normal (init_std), Dense kernels Xavier-normal (FuxiCTR).
Returns {"logit": [B], "attention": {"pooling": α [B, L] (attention pooling),
"interaction": [B, F, F] (the last input interacting layer at the target token, mean over heads;
rows and columns in interaction_fields() order)}}. The refiner's input and output tokens [B, L, D]
are sown to "intermediates" as "refiner_input" and "refiner_output".
"""
from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp

from ctrjax.data.schema import Schema
from ctrjax.layers.embedding import FeatureEmbedding
from ctrjax.layers.mlp import DNN
from ctrjax.layers.sequence import (POOLING_SCORES, FieldInteractionLayer, TargetAttentionPool, align_fields,
                                    pool_tokens, reverse_positions, time_buckets, with_candidate, without_fields)
from ctrjax.layers.transformer import NORMS, TransformerBlock, attention_mask

POOLINGS = ("attention", "target", "mean")


class TargetItemQuery(nn.Module):
  """The pooling query e_out^N: the item-group fields in their own embedding (named "embedding", so
  lazy optimisers and the embedding-free parameter count treat it as tables), through N interacting
  layers, flattened [B, F_i·d]."""
  schema: Schema
  embed_dim: int
  num_layers: int
  num_heads: int
  attention_dropout: float
  layer_norm: bool
  init_std: float

  @nn.compact
  def __call__(self, batch: dict, train: bool):
    item_schema = Schema((*self.schema.group("item"), self.schema.label))
    emb = FeatureEmbedding(item_schema, self.embed_dim, nn.initializers.truncated_normal(self.init_std),
                           name="embedding")(batch)
    x = jnp.stack(list(emb["item"].values()), axis=1)
    for layer in range(self.num_layers):
      x, _ = FieldInteractionLayer(self.num_heads, self.attention_dropout, self.layer_norm,
                                   name=f"interaction_{layer}")(x, train)
    return x.reshape(x.shape[0], -1)


class Model(nn.Module):
  schema: Schema
  embed_dim: int = 16
  # interacting layers (§3.2)
  interaction_layers: int = 2            # M over the input fields; 0 = none
  target_interaction_layers: int = 2     # N over the target-item fields (the pooling query)
  interaction_heads: int = 1
  interaction_dropout: float = 0.1       # on the interacting layers' attention weights
  interaction_layer_norm: bool = True    # official; False = paper eq. 3
  interact_non_sequence: bool = True     # Table 5: non-sequence fields inside the interaction
  # sequence refiner (§3.3)
  use_position: bool = True
  use_time: bool = True
  time_gap_field: str = "hist_time_gap"
  num_time_buckets: int = 4001
  time_bucket_width: float = 1.0         # gap units per bucket (MovieLens: minutes)
  time_log_base: float = 0.0             # 0 = linear buckets; > 1 = log buckets (official FESeq_5)
  causal: bool = True
  num_heads: int = 8
  num_layers: int = 1
  refiner_norm: str = "none"             # 'none' (official), 'post_ln' or 'pre_ln'
  attention_dropout: float = 0.1
  dropout: float = 0.0                   # Transformer and pooling projections
  # sequence pooling (§3.4)
  pooling: str = "attention"             # 'attention', 'target' or 'mean' (Table 8)
  pooling_score: str = "bilinear"        # 'bilinear', 'dot' or 'din' (Table 9)
  pooling_scale: bool = True             # divide by √pooling_dim (Table 10)
  pooling_dim: int = 128                 # d_h
  din_hidden: Sequence[int] = (512, 256, 128)
  # output layer
  dnn: DNN = DNN((1024, 512, 256), "leaky_relu")
  init_std: float = 0.02

  def __post_init__(self):
    super().__post_init__()
    for name, choices in (("pooling", POOLINGS), ("pooling_score", POOLING_SCORES), ("refiner_norm", NORMS)):
      if getattr(self, name) not in choices:
        raise ValueError(f"model.{name}={getattr(self, name)!r}; choose from {choices}")
    for name in ("interaction_layers", "target_interaction_layers"):
      if getattr(self, name) < 0:
        raise ValueError(f"model.{name}={getattr(self, name)!r}: expected >= 0")
    if self.num_layers < 1:
      raise ValueError(f"model.num_layers={self.num_layers!r}: expected >= 1")
    if self.embed_dim % self.interaction_heads:
      raise ValueError(f"model.interaction_heads={self.interaction_heads} does not divide "
                       f"model.embed_dim={self.embed_dim}")
    if self.num_time_buckets < 1 or self.time_bucket_width <= 0:
      raise ValueError(f"model.num_time_buckets={self.num_time_buckets!r} must be >= 1 and "
                       f"model.time_bucket_width={self.time_bucket_width!r} > 0")
    if self.time_log_base and self.time_log_base <= 1:
      raise ValueError(f"model.time_log_base={self.time_log_base!r}: 0 (linear) or > 1")
    fields = {f.name: f for f in self.schema.group("behavior")}
    if self.use_time and (self.time_gap_field not in fields or fields[self.time_gap_field].has_ids):
      raise ValueError(f"model.use_time=True needs the numeric behaviour field model.time_gap_field="
                       f"{self.time_gap_field!r}, which the dataset lacks (MovieLens: "
                       f"dataset.sequence_fields='feseq'); or set model.use_time=False")
    aligned = align_fields(self.schema, (self.time_gap_field,))
    if self.pooling == "attention" and not self.schema.group("item"):
      raise ValueError("model.pooling='attention' queries with the item fields; the dataset has none")
    width = self.embed_dim * (len(aligned.behavior) + len(aligned.others) + self.use_position + self.use_time)
    if width % self.num_heads:
      raise ValueError(f"FESeq token width {width} (model.embed_dim x (sequence fields + non-sequence "
                       f"fields + position + time)) is not divisible by model.num_heads={self.num_heads}")

  def interaction_fields(self) -> list[str]:
    """The fields of the input interacting layers, in order: the rows and columns of
    attention["interaction"] (a sequence field is named by its behaviour field)."""
    aligned = align_fields(self.schema, (self.time_gap_field,))
    fields = aligned.behavior + (aligned.others if self.interact_non_sequence else ())
    return [f.name for f in fields]

  @nn.compact
  def __call__(self, batch: dict, train: bool = False) -> dict:
    init = nn.initializers.truncated_normal(self.init_std)
    aligned = align_fields(self.schema, (self.time_gap_field,))
    emb = FeatureEmbedding(without_fields(self.schema, (self.time_gap_field,)), self.embed_dim, init,
                           name="embedding")(batch)
    sequence, valid = with_candidate(*aligned.field_stacks(emb), batch["behavior"]["mask"])  # [B, L, F_s, d]
    b, length = valid.shape
    others = aligned.other_vectors(emb)                                            # E_ns: F_n x [B, d]
    broadcast = jnp.zeros((b, length, 0, self.embed_dim))
    if others:
      broadcast = jnp.broadcast_to(jnp.stack(others, axis=1)[:, None], (b, length, len(others), self.embed_dim))
    out = {"attention": {}}
    interacting = jnp.concatenate([sequence, broadcast], axis=2) if self.interact_non_sequence else sequence
    for layer in range(self.interaction_layers):
      interacting, weights = FieldInteractionLayer(
          self.interaction_heads, self.interaction_dropout, self.interaction_layer_norm,
          name=f"interaction_{layer}")(interacting, train)
      out["attention"]["interaction"] = weights[:, -1].mean(axis=1)             # target token [B, F, F]
    parts = [interacting] if self.interact_non_sequence else [interacting, broadcast]
    x = jnp.concatenate([p.reshape(b, length, -1) for p in parts], axis=-1)
    if self.use_position:
      table = self.param("position_embedding", init, (length, self.embed_dim))
      x = jnp.concatenate([x, jnp.broadcast_to(table[reverse_positions(length)], (b, length, self.embed_dim))],
                          axis=-1)
    if self.use_time:
      gap = jnp.concatenate([batch["behavior"][self.time_gap_field], jnp.zeros((b, 1))], axis=1)
      buckets = time_buckets(gap, self.num_time_buckets, self.time_bucket_width, self.time_log_base)
      table = self.param("time_embedding", init, (self.num_time_buckets, self.embed_dim))
      x = jnp.concatenate([x, table[buckets]], axis=-1)
    self.sow("intermediates", "refiner_input", x)
    allow = attention_mask(valid, self.causal)
    for layer in range(self.num_layers):
      x = TransformerBlock(self.num_heads, ffn_activation="leaky_relu", dropout=self.dropout,
                           attention_dropout=self.attention_dropout, norm=self.refiner_norm,
                           name=f"refiner_{layer}")(x, allow, train)
    if self.refiner_norm == "pre_ln":
      x = nn.LayerNorm(name="refiner_final_ln")(x)
    self.sow("intermediates", "refiner_output", x)
    if self.pooling == "attention":
      query = TargetItemQuery(self.schema, self.embed_dim, self.target_interaction_layers,
                              self.interaction_heads, self.interaction_dropout, self.interaction_layer_norm,
                              self.init_std, name="target_item")(batch, train)
      pooled, out["attention"]["pooling"] = TargetAttentionPool(
          self.pooling_score, self.pooling_scale, self.pooling_dim, tuple(self.din_hidden), self.dropout,
          self.attention_dropout, name="pooling")(query, x, valid, train)
    else:
      pooled = pool_tokens(x, valid, self.pooling)
    z = jnp.concatenate([*others, pooled], axis=-1)
    logit = self.dnn.tower(output_dim=1)(z, train)
    out["logit"] = logit[:, 0]
    return out

