"""LR: logistic regression, logit = b + sum of one scalar weight per field (models.md §15).

Multi-valued fields and behaviour sequences enter as masked means of their ids' weights (the
history is a mean-pooled multi-hot field, as for every non-sequence baseline).
"""
import flax.linen as nn
import jax.numpy as jnp

from ctrjax.data.schema import Schema
from ctrjax.layers import FeatureEmbedding, masked_mean


class Model(nn.Module):
  schema: Schema
  init_std: float = 1e-4

  @nn.compact
  def __call__(self, batch: dict, train: bool = False) -> dict:
    emb = FeatureEmbedding(self.schema, dim=1, embedding_init=nn.initializers.normal(self.init_std),
                           name="embedding")(batch)
    terms = [v[:, 0] for g in ("item", "user", "context") for v in emb[g].values()]
    mask = batch["behavior"]["mask"] if emb["behavior"] else None
    terms += [masked_mean(v, mask, axis=1)[:, 0] for v in emb["behavior"].values()]
    bias = self.param("bias", nn.initializers.zeros, ())
    return {"logit": bias + jnp.sum(jnp.stack(terms, -1), -1)}
