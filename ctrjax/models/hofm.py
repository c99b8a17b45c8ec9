"""HOFM, higher-order factorization machine (Blondel et al., NIPS'16), third order by default.

logit = b + Σ_f w_f(x_f) + Σ_{t=2}^{order} A^t(P^(t)), where A^t is the ANOVA kernel of degree t
over the fields, Σ_k Σ_{i_1<…<i_t} Π_s p^(t)_{i_s,k}, computed by the paper's dynamic programme
(``anova_kernel``, O(F·t·d) instead of O(F^t·d)). As in the paper each order t has its own factors
P^(t) (d per field): one FeatureEmbedding of width d·(order−1) whose slices are the orders' factors,
so every factor stays under params["embedding"]. A field's factor vector is its embedding
(multi-valued fields and the history mean-pooled as one field, numeric fields x·v), so x_i p_i of
the paper is e_i here. order=2 is FM with a separate bias/first-order term, as FM.
"""
import flax.linen as nn
import jax.numpy as jnp

from ctrjax.data.schema import Schema
from ctrjax.layers import FeatureEmbedding
from ctrjax.layers.interaction import FirstOrder, anova_kernel, field_vectors


class Model(nn.Module):
  schema: Schema
  embed_dim: int = 16                # factors per field and per order
  order: int = 3
  pooling: str = "mean"
  init_std: float = 0.02

  @nn.compact
  def __call__(self, batch: dict, train: bool = False) -> dict:
    if self.order < 2:
      raise ValueError(f"model.order={self.order!r}: expected >= 2 (2 = FM)")
    emb = FeatureEmbedding(self.schema, self.embed_dim * (self.order - 1),
                           nn.initializers.truncated_normal(self.init_std), name="embedding")(batch)
    factors = jnp.split(field_vectors(emb, batch, self.pooling), self.order - 1, axis=-1)
    logit = FirstOrder(self.schema, name="first_order")(batch)
    for degree, p in enumerate(factors, start=2):
      logit = logit + anova_kernel(p, degree)
    return {"logit": logit}
