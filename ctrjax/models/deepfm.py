"""DeepFM (Guo et al., IJCAI'17): logit = first order + FM + DNN, sharing embeddings.

Field vectors f_1..f_F [B, d] as in BaseModel (behaviour fields sum-pooled: a pooled history is
one field, not one feature per behaviour as in the original FM). FM term Σ_{i<j} ⟨f_i, f_j⟩ by the
sum-square trick; DNN over [f_1 ; ... ; f_F]; first-order weights per id (FirstOrder, behaviours
mean-pooled).
"""
import flax.linen as nn

from ctrjax.data.schema import Schema
from ctrjax.layers import DNN, FeatureEmbedding
from ctrjax.layers.interaction import FirstOrder, field_vectors, fm_pairwise


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
    deep = self.dnn.tower(output_dim=1)(fields.reshape(fields.shape[0], -1), train)[:, 0]
    return {"logit": FirstOrder(self.schema, name="first_order")(batch) + fm_pairwise(fields) + deep}
