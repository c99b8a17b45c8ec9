"""PNN, inner-product variant (IPNN; Qu et al., ICDM'16) as in FuxiCTR, a DIN Table 3 baseline.

Field vectors f_1..f_F [B, d] (user, item and context fields; behaviour fields sum-pooled as in
BaseModel); product layer = [f_1 ; ... ; f_F ; ⟨f_i, f_j⟩ for all i < j] -> MLP -> logit.
"""
import flax.linen as nn
import jax.numpy as jnp

from ctrjax.data.schema import Schema
from ctrjax.layers import DNN, FeatureEmbedding
from ctrjax.layers.interaction import field_vectors, inner_products


class Model(nn.Module):
  schema: Schema
  embed_dim: int = 16
  dnn: DNN = DNN((200, 80), "prelu")
  pooling: str = "sum"
  init_std: float = 0.02

  @nn.compact
  def __call__(self, batch: dict, train: bool = False) -> dict:
    emb = FeatureEmbedding(self.schema, self.embed_dim, nn.initializers.truncated_normal(self.init_std),
                           name="embedding")(batch)
    fields = field_vectors(emb, batch, self.pooling)                                  # [B, F, d]
    x = jnp.concatenate([fields.reshape(fields.shape[0], -1), inner_products(fields)], axis=-1)
    logit = self.dnn.tower(output_dim=1)(x, train)
    return {"logit": logit[:, 0]}
