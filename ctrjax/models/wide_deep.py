"""Wide & Deep (Cheng et al., DLRS'16) as DIN's Table 3 baseline.

logit = wide + deep. Deep = BaseModel's MLP over [fields ; sum-pooled behaviours]. Wide = the
first-order weights of every field (FuxiCTR's form) plus, as the DIN paper does, the
cross-product of the user's behaviours and the candidate: one learned scalar per (candidate id,
behaviour id) pair, summed over the valid behaviours. Pairs are hashed into ``cross_buckets``
rows (the usual hashed crossed column), so unseen pairs still get a (shared) weight.
wide_cross names the (candidate field, behaviour field) pair; () drops the cross (FuxiCTR).
"""
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from ctrjax.data.schema import Schema
from ctrjax.layers import DNN, FeatureEmbedding, pooled_fields
from ctrjax.layers.interaction import FirstOrder


def hashed_cross(candidate: jax.Array, behaviors: jax.Array, buckets: int) -> jax.Array:
  """Bucket of each (candidate [B], behaviour [B, T]) id pair, uint32 multiplicative hashing."""
  a = candidate.astype(jnp.uint32)[:, None] * jnp.uint32(0x9E3779B1)
  b = behaviors.astype(jnp.uint32) * jnp.uint32(0x85EBCA77)
  return ((a ^ (b + jnp.uint32(0x165667B1))) % jnp.uint32(buckets)).astype(jnp.int32)


class Model(nn.Module):
  schema: Schema
  embed_dim: int = 16
  dnn: DNN = DNN((200, 80), "prelu")
  pooling: str = "sum"          # behaviour fields in the deep part: 'sum' (BaseModel) or 'mean'
  init_std: float = 0.02
  wide_cross: Sequence[str] = ("item_id", "hist_item_id")
  cross_buckets: int = 2 ** 20

  def __post_init__(self):
    super().__post_init__()
    names = {f.name: f.group for f in self.schema.fields}
    if self.wide_cross and (len(self.wide_cross) != 2 or names.get(self.wide_cross[0]) != "item"
                            or names.get(self.wide_cross[1]) != "behavior"):
      raise ValueError(f"model.wide_cross={tuple(self.wide_cross)!r}: expected (candidate item field, "
                       f"behaviour field) or (); fields: {names}")

  @nn.compact
  def __call__(self, batch: dict, train: bool = False) -> dict:
    emb = FeatureEmbedding(self.schema, self.embed_dim, nn.initializers.truncated_normal(self.init_std),
                           name="embedding")(batch)
    mask = batch["behavior"]["mask"] if emb["behavior"] else None
    pooled = jnp.concatenate(list(pooled_fields(emb, mask, self.pooling).values()), axis=-1)
    deep = self.dnn.tower(output_dim=1)(pooled, train)[:, 0]
    wide = FirstOrder(self.schema, name="wide")(batch)
    if self.wide_cross:
      candidate, history = batch["item"][self.wide_cross[0]], batch["behavior"][self.wide_cross[1]]
      cross_weights = self.param("cross_weights", nn.initializers.zeros, (self.cross_buckets,))
      pair_weights = jnp.take(cross_weights, hashed_cross(candidate, history, self.cross_buckets))
      wide = wide + jnp.sum(jnp.where(mask, pair_weights, 0.0), axis=-1)
    return {"logit": wide + deep}
