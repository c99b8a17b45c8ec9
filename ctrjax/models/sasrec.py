"""SASRec for CTR (Kang & McAuley, ICDM'18), as the FESeq paper's baseline (§4.1.2: "the latent
factor model in the prediction layer is replaced with an MLP"; the FESeq repository's FuxiCTR port).

Tokens (ctrjax/layers/sequence.py, align_fields): e_t = ⊕ of the behaviour fields' embeddings, the
candidate e_c = ⊕ of its fields on the same tables (item fields, else context fields such as the
candidate's hour), appended last: X = [e_1 ; ... ; e_T ; e_c] + P, L = T + 1, P a learned table
indexed by reverse position (e_c -> 0, newest behaviour -> 1), then Dropout.
Self-attention blocks (num_layers), causal: query i attends to keys j ≤ i, padded keys hidden:
  post_ln: S = LN(X + Drop(MHSA(X))), F = LN(S + Drop(FFN(S))), FFN = ReLU, width D.
Prediction: z = [non-sequence fields ; pool(F)] -> MLP -> one logit; pool 'target' = F at the
candidate, which has read the whole history: the "next item" position whose dot product with the
candidate's embedding is SASRec's score.

Decisions (each a field): defaults follow the FESeq repository's SASRec_eleme config (the code behind
the paper's baseline numbers): 8 heads, 2 blocks, Post-LN (norm='pre_ln' is the SASRec paper's
x + Drop(g(LN(x))) with a final LayerNorm), ReLU FFN of width D, attention_dropout 0.1 on the
weights, dropout 0 (embedding and blocks; dnn.dropout in the MLP), target pooling, MLP 1024-512-256
ReLU. The candidate is a token (as the port; the SASRec paper scores it against the output at the
newest behaviour), and the position is the distance to the candidate rather than the absolute slot,
so left padding does not move it. No √d scaling of the embeddings (the SASRec code multiplies by
√d). The numeric behaviour field time_gap_field, if present, is not used. Init: embeddings and the
position table truncated normal (init_std), Dense kernels Xavier-normal. The behaviour mask is
batch["behavior"]["mask"]; an empty history attends to the candidate only.
Returns {"logit": [B]}.
"""
from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from ctrjax.data.schema import Schema
from ctrjax.layers.embedding import FeatureEmbedding
from ctrjax.layers.mlp import DNN
from ctrjax.layers.sequence import (POOLINGS, align_fields, pool_tokens, reverse_positions, with_candidate,
                                    without_fields)
from ctrjax.layers.transformer import NORMS, TransformerBlock, attention_mask


class Model(nn.Module):
  schema: Schema
  embed_dim: int = 16
  num_heads: int = 8
  num_layers: int = 2
  norm: str = "post_ln"                   # 'post_ln' (FuxiCTR port), 'pre_ln' (paper) or 'none'
  causal: bool = True
  attention_dropout: float = 0.1
  dropout: float = 0.0                    # embedding and blocks
  pooling: str = "target"                 # 'target', 'mean', 'sum' or 'concat'
  time_gap_field: str = "hist_time_gap"   # a numeric behaviour field left out of the tokens
  dnn: DNN = DNN((1024, 512, 256))
  init_std: float = 0.02

  def __post_init__(self):
    super().__post_init__()
    for name, choices in (("norm", NORMS), ("pooling", POOLINGS)):
      if getattr(self, name) not in choices:
        raise ValueError(f"model.{name}={getattr(self, name)!r}; choose from {choices}")
    if self.num_layers < 1:
      raise ValueError(f"model.num_layers={self.num_layers!r}: expected >= 1")
    width = self.embed_dim * len(align_fields(self.schema, (self.time_gap_field,)).behavior)
    if width % self.num_heads:
      raise ValueError(f"SASRec token width {width} (behaviour fields x model.embed_dim) is not divisible "
                       f"by model.num_heads={self.num_heads}")

  @nn.compact
  def __call__(self, batch: dict, train: bool = False) -> dict:
    init = nn.initializers.truncated_normal(self.init_std)
    aligned = align_fields(self.schema, (self.time_gap_field,))
    emb = FeatureEmbedding(without_fields(self.schema, (self.time_gap_field,)), self.embed_dim, init,
                           name="embedding")(batch)
    x, valid = with_candidate(*aligned.tokens(emb), batch["behavior"]["mask"])     # [B, L, D]
    positions = self.param("position_embedding", init, (x.shape[1], x.shape[-1]))
    x = nn.Dropout(self.dropout, deterministic=not train)(x + positions[reverse_positions(x.shape[1])])
    allow = attention_mask(valid, self.causal)
    for layer in range(self.num_layers):
      x = TransformerBlock(self.num_heads, dropout=self.dropout, attention_dropout=self.attention_dropout,
                           norm=self.norm, name=f"block_{layer}")(x, allow, train)
    if self.norm == "pre_ln":
      x = nn.LayerNorm(name="final_ln")(x)
    z = jnp.concatenate([*aligned.other_vectors(emb), pool_tokens(x, valid, self.pooling)], axis=-1)
    logit = self.dnn.tower(output_dim=1)(z, train)
    return {"logit": logit[:, 0]}
