"""Feature-interaction layers over field vectors x [B, F, d] (FM, PNN, DeepFM, ...)."""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from ctrjax.data.schema import Schema
from ctrjax.layers.embedding import FeatureEmbedding, masked_mean


def fm_pairwise(x: jax.Array) -> jax.Array:
  """Σ_{i<j} ⟨x_i, x_j⟩ [B] by the sum-square trick: ½ Σ_k [(Σ_f x_fk)² − Σ_f x_fk²]."""
  return 0.5 * jnp.sum(jnp.square(jnp.sum(x, axis=1)) - jnp.sum(jnp.square(x), axis=1), axis=-1)


def inner_products(x: jax.Array) -> jax.Array:
  """⟨x_i, x_j⟩ for every pair i < j [B, F(F−1)/2] (IPNN's product signals), row-major pair order."""
  i, j = jnp.triu_indices(x.shape[1], k=1)
  return jnp.sum(x[:, i] * x[:, j], axis=-1)


class FirstOrder(nn.Module):
  """b + Σ_f w_f(x_f): one scalar weight per id (FuxiCTR's LogisticRegression, models.md §15);
  multi-valued fields and behaviour sequences contribute the mean of their ids' weights,
  numeric fields w·x. Returns the logit term [B]."""
  schema: Schema
  init_std: float = 1e-4

  @nn.compact
  def __call__(self, batch: dict) -> jax.Array:
    weights = FeatureEmbedding(self.schema, dim=1, embedding_init=nn.initializers.normal(self.init_std),
                               name="embedding")(batch)
    terms = [v[:, 0] for g in ("user", "item", "context") for v in weights[g].values()]
    terms += [masked_mean(v, batch["behavior"]["mask"], axis=1)[:, 0] for v in weights["behavior"].values()]
    return self.param("bias", nn.initializers.zeros, ()) + jnp.sum(jnp.stack(terms, -1), -1)
