"""BST: Behavior Sequence Transformer (Chen et al., DLP-KDD'19).

Tokens: S = [e_1 ; ... ; e_T ; e_a], L = T + 1, with e_t = concat of the behaviour fields'
embeddings (item id ⊕ genres) and the candidate e_a (behavior_aligned_item) last; each token is
concatenated with its position embedding p_{L−1−l} [L, d] (l = slot; p_0 = the candidate).
Transformer: num_layers Post-LN blocks, X = LN(X + Drop(MHSA(X))), X = LN(X + Drop(FFN(X))),
  padded slots masked as keys; the candidate is always valid.
Output: z = [user fields ; item fields ; context fields ; pool(X)] -> MLP (1024-512-256,
  LeakyReLU) -> one logit.

Decisions (the paper leaves these open, or we lack its inputs; each a field):
  * position: 'learned' concatenates a learned d-wide table indexed by the distance to the
    candidate (FuxiCTR: a sinusoidal-initialised table concatenated by slot), so a slot's meaning
    does not depend on the amount of left padding; 'none' drops it. The paper's position is the
    time gap t(v_t) − t(v_i); the time stamps of the history are only in the dataset's meta group,
    so time is left out.
  * pooling: 'concat' (paper Fig. 1: the Transformer's output at every position, padded slots
    zeroed), 'target' (the candidate's output; FESeq and BARS baselines), 'mean' (FuxiCTR) or
    'sum' over the valid slots and the candidate.
  * Transformer: ctrjax/layers/transformer.py's Post-LN block, FFN hidden = ffn_mult x token width
    with ReLU (the paper uses LeakyReLU in the FFN), no dropout on the attention weights.
  * Dropout 0.2 (paper) in the Transformer (``dropout``) and in the MLP (``dnn.dropout``).
  * Init: embeddings and the position table truncated normal (init_std); Dense kernels
    Xavier-normal (FuxiCTR).
  * The behaviour mask is batch["behavior"]["mask"]; an empty history attends to the candidate only.
Returns {"logit": [B]}.
"""
from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from ctrjax.data.schema import Schema
from ctrjax.layers.embedding import FeatureEmbedding, behavior_aligned_item, masked_mean, masked_sum
from ctrjax.layers.mlp import DNN
from ctrjax.layers.transformer import TransformerBlock

POSITIONS = ("learned", "none")
POOLINGS = ("concat", "target", "mean", "sum")


class Model(nn.Module):
  schema: Schema
  embed_dim: int = 16
  num_heads: int = 8
  num_layers: int = 1
  ffn_mult: int = 4                       # FFN hidden = ffn_mult x token width
  dropout: float = 0.2                    # Transformer
  position: str = "learned"               # 'learned' or 'none'
  pooling: str = "concat"                 # 'concat' (paper), 'target', 'mean' or 'sum'
  dnn: DNN = DNN((1024, 512, 256), "leaky_relu", dropout=0.2)
  init_std: float = 0.02

  def __post_init__(self):
    super().__post_init__()
    if self.position not in POSITIONS:
      raise ValueError(f"model.position={self.position!r}; choose from {POSITIONS}")
    if self.pooling not in POOLINGS:
      raise ValueError(f"model.pooling={self.pooling!r}; choose from {POOLINGS}")
    if self.num_layers < 1:
      raise ValueError(f"model.num_layers={self.num_layers!r}: expected >= 1")
    if not self.schema.group("behavior"):
      raise ValueError("BST needs a behaviour sequence; the dataset has no behaviour fields")
    width = self.token_width()
    if width % self.num_heads:
      raise ValueError(f"BST token width {width} (behaviour fields x model.embed_dim"
                       f"{' + position' if self.position == 'learned' else ''}) is not divisible "
                       f"by model.num_heads={self.num_heads}")

  def token_width(self) -> int:
    fields = len(self.schema.group("behavior")) + (self.position == "learned")
    return fields * self.embed_dim

  @nn.compact
  def __call__(self, batch: dict, train: bool = False) -> dict:
    init = nn.initializers.truncated_normal(self.init_std)
    emb = FeatureEmbedding(self.schema, self.embed_dim, init, name="embedding")(batch)
    behaviors = jnp.concatenate(list(emb["behavior"].values()), axis=-1)        # [B, T, D_b]
    target = behavior_aligned_item(self.schema, emb)                             # [B, D_b]
    x = jnp.concatenate([behaviors, target[:, None]], axis=1)                    # S [B, L, D_b]
    mask = batch["behavior"]["mask"]
    valid = jnp.concatenate([mask, jnp.ones((mask.shape[0], 1), bool)], axis=1)  # [B, L]
    if self.position == "learned":
      by_distance = self.param("position_embedding", init, (x.shape[1], self.embed_dim))
      x = jnp.concatenate([x, jnp.broadcast_to(by_distance[::-1], (*x.shape[:2], self.embed_dim))],
                          axis=-1)
    for layer in range(self.num_layers):
      x = TransformerBlock(self.num_heads, self.ffn_mult * x.shape[-1], dropout=self.dropout, norm="post_ln",
                           name=f"transformer_{layer}")(x, valid, train)
    parts = [v for group in ("user", "item", "context") for v in emb[group].values()]
    z = jnp.concatenate([*parts, self._pool(x, valid)], axis=-1)
    logit = self.dnn.tower(output_dim=1)(z, train)
    return {"logit": logit[:, 0]}

  def _pool(self, x, valid):
    """[B, L, D] -> [B, D] (or [B, L·D] for 'concat'), padded slots never contributing."""
    if self.pooling == "target":
      return x[:, -1]
    if self.pooling == "mean":
      return masked_mean(x, valid, axis=1)
    if self.pooling == "sum":
      return masked_sum(x, valid, axis=1)
    return jnp.where(valid[..., None], x, 0.0).reshape(x.shape[0], -1)
