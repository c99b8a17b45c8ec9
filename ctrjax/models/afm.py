"""AFM, Attentional Factorization Machine (Xiao et al., IJCAI'17), as FuxiCTR's AFM.

logit = b + Σ_f w_f(x_f) + pᵀ Σ_{i<j} a_ij (e_i ∘ e_j), with attention over the field pairs
a_ij = softmax_{(i,j)}(hᵀ ReLU(W (e_i ∘ e_j) + c)) (paper eq. 4–5); W: d -> attention_dim.
Field vectors as in ``field_vectors``. Dropout (paper §3.3, FuxiCTR ``attention_dropout``):
``attention_dropout`` on a_ij, ``dropout`` on the pooled vector. The paper's L2 on W is left to the
optimiser. out["attention"] = {"pairs": a [B, F(F−1)/2]}, pairs in ``pairwise_products`` order.
"""
import flax.linen as nn
import jax
import jax.numpy as jnp

from ctrjax.data.schema import Schema
from ctrjax.layers import FeatureEmbedding
from ctrjax.layers.interaction import FirstOrder, field_vectors, pairwise_products


class Model(nn.Module):
  schema: Schema
  embed_dim: int = 16
  pooling: str = "mean"
  attention_dim: int = 10            # FuxiCTR default; the paper tunes this "attention factor"
  attention_dropout: float = 0.0
  dropout: float = 0.0
  init_std: float = 0.02

  @nn.compact
  def __call__(self, batch: dict, train: bool = False) -> dict:
    emb = FeatureEmbedding(self.schema, self.embed_dim, nn.initializers.truncated_normal(self.init_std),
                           name="embedding")(batch)
    pairs = pairwise_products(field_vectors(emb, batch, self.pooling))          # [B, P, d]
    xavier = nn.initializers.xavier_normal()
    hidden = nn.relu(nn.Dense(self.attention_dim, kernel_init=xavier, name="attention_hidden")(pairs))
    scores = nn.Dense(1, use_bias=False, kernel_init=xavier, name="attention_score")(hidden)[..., 0]
    attention = jax.nn.softmax(scores, axis=-1)
    weights = nn.Dropout(self.attention_dropout, deterministic=not train)(attention)
    pooled = nn.Dropout(self.dropout, deterministic=not train)(jnp.einsum("bp,bpd->bd", weights, pairs))
    logit = nn.Dense(1, use_bias=False, kernel_init=xavier, name="projection")(pooled)[:, 0]
    return {"logit": FirstOrder(self.schema, name="first_order")(batch) + logit,
            "attention": {"pairs": attention}}
