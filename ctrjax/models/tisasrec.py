"""TiSASRec for CTR (Li et al., WSDM'20), as the FESeq paper's baseline (§4.1.2; the FESeq
repository's FuxiCTR port): SASRec's tokens and MLP head with time-interval-aware self-attention.

Tokens: X = [e_1 ; ... ; e_T ; e_c] (ctrjax/layers/sequence.py, align_fields), L = T + 1, then Dropout.
Times: t_l = −gap_l with gap the numeric behaviour field time_gap_field (the candidate's time minus
the behaviour's; 0 for the candidate), so |t_i − t_j| = |gap_i − gap_j|.
Relative intervals (eq. 1): r_ij = min(⌊|t_i − t_j| / r_min⌋, k), r_min = the row's smallest
  positive interval between two valid tokens (1 if none), k = max_time_interval.
Attention (eq. 5-6), per block, heads split every D-vector:
  e_ij = q_i · (k_j + R^K[r_ij] + P^K[p_j]) / √(D/H),  α = masked softmax_j (causal, padding hidden),
  z_i = Σ_j α_ij (v_j + R^V[r_ij] + P^V[p_j]),
  with p_j the reverse position (candidate 0) and R^K, R^V [k + 1, D], P^K, P^V [L, D] learned
  tables shared by the blocks; then the output projection, residual, LayerNorm and FFN as SASRec.
Prediction: z = [non-sequence fields ; pool(F)] -> MLP -> one logit.

Decisions (each a field): defaults follow the FESeq repository's TiSASRec_eleme config (the code
behind the paper's baseline numbers): 1 head, 1 block, Post-LN, ReLU FFN of width D,
attention_dropout 0.4, dropout 0.2 (embedding and blocks; dnn.dropout 0.2 in the MLP), k = 1024
(num_rel_time_embeddings 1026), absolute intervals, target pooling, MLP 1024-512-256 LeakyReLU. r_min is taken over valid tokens only (the port takes it
over the whole padded row). Positions are reverse (distance to the candidate), not absolute slots,
so left padding does not move them. The relative and position embeddings get no dropout (the
TiSASRec code drops them out). Init: embeddings and the four tables truncated normal (init_std),
Dense kernels Xavier-normal. The behaviour mask is batch["behavior"]["mask"]; an empty history
attends to the candidate only.
Returns {"logit": [B]}.
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from ctrjax.data.schema import Schema
from ctrjax.layers.embedding import FeatureEmbedding
from ctrjax.layers.mlp import DNN
from ctrjax.layers.sequence import (POOLINGS, align_fields, pool_tokens, reverse_positions, with_candidate,
                                    without_fields)
from ctrjax.layers.transformer import NORMS, TransformerBlock, attention_mask


def relative_intervals(gap: jax.Array, valid: jax.Array, max_interval: int) -> jax.Array:
  """r [B, L, L] = min(⌊|gap_i − gap_j| / r_min⌋, max_interval), r_min the smallest positive
  |gap_i − gap_j| between valid tokens of the row (1 when there is none)."""
  interval = jnp.abs(gap[:, :, None] - gap[:, None, :])
  pairs = valid[:, :, None] & valid[:, None, :] & (interval > 0)
  smallest = jnp.min(jnp.where(pairs, interval, jnp.inf), axis=(1, 2))
  unit = jnp.where(jnp.isfinite(smallest), smallest, 1.0)[:, None, None]
  return jnp.minimum(jnp.floor(interval / unit), max_interval).astype(jnp.int32)


class Model(nn.Module):
  schema: Schema
  embed_dim: int = 16
  num_heads: int = 1
  num_layers: int = 1
  norm: str = "post_ln"                   # 'post_ln' (FuxiCTR port), 'pre_ln' (paper) or 'none'
  causal: bool = True
  attention_dropout: float = 0.4
  dropout: float = 0.2                    # embedding and blocks
  max_time_interval: int = 1024           # k
  pooling: str = "target"                 # 'target', 'mean', 'sum' or 'concat'
  time_gap_field: str = "hist_time_gap"
  dnn: DNN = DNN((1024, 512, 256), "leaky_relu", dropout=0.2)
  init_std: float = 0.02

  def __post_init__(self):
    super().__post_init__()
    for name, choices in (("norm", NORMS), ("pooling", POOLINGS)):
      if getattr(self, name) not in choices:
        raise ValueError(f"model.{name}={getattr(self, name)!r}; choose from {choices}")
    if self.num_layers < 1 or self.max_time_interval < 1:
      raise ValueError(f"model.num_layers={self.num_layers!r} and model.max_time_interval="
                       f"{self.max_time_interval!r}: expected >= 1")
    fields = {f.name: f for f in self.schema.group("behavior")}
    if self.time_gap_field not in fields or fields[self.time_gap_field].has_ids:
      raise ValueError(f"TiSASRec needs the numeric behaviour field model.time_gap_field="
                       f"{self.time_gap_field!r}, which the dataset lacks (MovieLens: "
                       f"dataset.sequence_fields='feseq')")
    width = self.embed_dim * len(align_fields(self.schema, (self.time_gap_field,)).behavior)
    if width % self.num_heads:
      raise ValueError(f"TiSASRec token width {width} (behaviour fields x model.embed_dim) is not "
                       f"divisible by model.num_heads={self.num_heads}")

  @nn.compact
  def __call__(self, batch: dict, train: bool = False) -> dict:
    init = nn.initializers.truncated_normal(self.init_std)
    aligned = align_fields(self.schema, (self.time_gap_field,))
    emb = FeatureEmbedding(without_fields(self.schema, (self.time_gap_field,)), self.embed_dim, init,
                           name="embedding")(batch)
    x, valid = with_candidate(*aligned.tokens(emb), batch["behavior"]["mask"])     # [B, L, D]
    b, length, width = x.shape
    x = nn.Dropout(self.dropout, deterministic=not train)(x)
    gap = jnp.concatenate([batch["behavior"][self.time_gap_field], jnp.zeros((b, 1))], axis=1)
    intervals = relative_intervals(gap, valid, self.max_time_interval)            # [B, L, L]
    positions = reverse_positions(length)

    def table(name, rows):
      return self.param(name, init, (rows, width))

    key_terms = (table("interval_key", self.max_time_interval + 1)[intervals]
                 + table("position_key", length)[positions][None, None])
    value_terms = (table("interval_value", self.max_time_interval + 1)[intervals]
                   + table("position_value", length)[positions][None, None])
    allow = attention_mask(valid, self.causal)
    for layer in range(self.num_layers):
      x = TransformerBlock(self.num_heads, dropout=self.dropout, attention_dropout=self.attention_dropout,
                           norm=self.norm, name=f"block_{layer}")(x, allow, train, key_terms, value_terms)
    if self.norm == "pre_ln":
      x = nn.LayerNorm(name="final_ln")(x)
    z = jnp.concatenate([*aligned.other_vectors(emb), pool_tokens(x, valid, self.pooling)], axis=-1)
    logit = self.dnn.tower(output_dim=1)(z, train)
    return {"logit": logit[:, 0]}
