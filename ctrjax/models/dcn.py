"""DCN, Deep & Cross Network (Wang et al., ADKDD'17), and CrossNet alone.

x_0 = ⊕_f e_f (``field_vectors`` flattened); cross network x_{l+1} = x_0 (x_lᵀ w_l) + b_l + x_l
(``CrossLayer``, paper eq. 3); deep network h = DNN(x_0) in parallel; logit = wᵀ[x_L ; h] + b
(paper eq. 5, FuxiCTR ``DCN.fc``). ``dnn.hidden=()`` drops the DNN: the AutoInt paper's CrossNet
("CN") baseline, logit = wᵀ x_L + b. DNN widths default to the repo's Embedding&MLP baselines
(200-80, as DeepFM, W&D, IPNN) with ReLU; the paper tunes them per dataset. The paper feeds
log-transformed dense features into x_0 as well; numeric fields here are x·v like every field.
"""
import flax.linen as nn
import jax.numpy as jnp

from ctrjax.data.schema import Schema
from ctrjax.layers import DNN, FeatureEmbedding
from ctrjax.layers.interaction import CrossLayer, field_vectors


class Model(nn.Module):
  schema: Schema
  embed_dim: int = 16
  pooling: str = "mean"
  num_cross_layers: int = 3
  dnn: DNN = DNN((200, 80))          # hidden () = CrossNet only
  init_std: float = 0.02

  @nn.compact
  def __call__(self, batch: dict, train: bool = False) -> dict:
    emb = FeatureEmbedding(self.schema, self.embed_dim, nn.initializers.truncated_normal(self.init_std),
                           name="embedding")(batch)
    fields = field_vectors(emb, batch, self.pooling)
    x0 = fields.reshape(fields.shape[0], -1)
    x = x0
    for layer in range(self.num_cross_layers):
      x = CrossLayer(name=f"cross{layer}")(x0, x)
    parts = [x]
    if self.dnn.hidden:
      parts.append(self.dnn.tower()(x0, train))
    logit = nn.Dense(1, kernel_init=nn.initializers.xavier_normal(), name="output")(
        jnp.concatenate(parts, axis=-1))
    return {"logit": logit[:, 0]}
