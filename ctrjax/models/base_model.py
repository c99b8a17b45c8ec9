"""DIN's BaseModel (Embedding & MLP, DIN paper §4.2).

A behaviour is the concatenation of its fields' embeddings (e.g. item id ⊕ genres); the user's
behaviours are sum-pooled over non-padding positions (paper eq. 1); user, candidate item, pooled
behaviours and context are concatenated and fed to an MLP (200-80, PReLU in the paper's setup).
id_dropout is the paper's "Dropout" regulariser (§6.5: 50% of the feature ids of each sample).
"""
import flax.linen as nn
import jax.numpy as jnp

from ctrjax.data.schema import Schema
from ctrjax.layers import DNN, FeatureEmbedding, pooled_fields


class Model(nn.Module):
  schema: Schema
  embed_dim: int = 16
  dnn: DNN = DNN((200, 80), "prelu")
  pooling: str = "sum"          # 'sum' (paper) or 'mean'
  init_std: float = 0.02
  id_dropout: float = 0.0

  @nn.compact
  def __call__(self, batch: dict, train: bool = False) -> dict:
    emb = FeatureEmbedding(self.schema, self.embed_dim, nn.initializers.truncated_normal(self.init_std),
                           self.id_dropout, name="embedding")(batch, train)
    fields = pooled_fields(emb, batch["behavior"]["mask"] if emb["behavior"] else None, self.pooling)
    x = jnp.concatenate(list(fields.values()), axis=-1)
    logit = self.dnn.tower(output_dim=1)(x, train)
    return {"logit": logit[:, 0]}
