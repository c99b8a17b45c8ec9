"""NFM, Neural Factorization Machine (He & Chua, SIGIR'17).

logit = b + Σ_f w_f(x_f) + MLP(f_BI), f_BI = Σ_{i<j} e_i ∘ e_j [B, d] (Bi-Interaction pooling,
``bi_interaction``), MLP = hidden layers then a linear output (paper eq. 2–4). One hidden layer
of 200 by default (as the paper recommends and AutoInt §5.1.4 uses). Field vectors as in
``field_vectors``. The paper applies dropout (and optionally BatchNorm) to f_BI too; here
``dnn.dropout`` acts on f_BI and on every hidden layer, ``dnn.batch_norm`` on the hidden layers.
"""
import flax.linen as nn

from ctrjax.data.schema import Schema
from ctrjax.layers import DNN, FeatureEmbedding
from ctrjax.layers.interaction import FirstOrder, bi_interaction, field_vectors


class Model(nn.Module):
  schema: Schema
  embed_dim: int = 16
  pooling: str = "mean"
  dnn: DNN = DNN((200,))
  init_std: float = 0.02

  @nn.compact
  def __call__(self, batch: dict, train: bool = False) -> dict:
    emb = FeatureEmbedding(self.schema, self.embed_dim, nn.initializers.truncated_normal(self.init_std),
                           name="embedding")(batch)
    pooled = nn.Dropout(self.dnn.dropout, deterministic=not train)(
        bi_interaction(field_vectors(emb, batch, self.pooling)))
    deep = self.dnn.tower(output_dim=1)(pooled, train)[:, 0]
    return {"logit": FirstOrder(self.schema, name="first_order")(batch) + deep}
