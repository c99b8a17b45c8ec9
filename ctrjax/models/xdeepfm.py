"""xDeepFM (Lian et al., KDD'18), and CIN alone.

X^0 = E [B, F, d] (``field_vectors``). CIN (``CIN`` layer, paper eq. 6): layer k has
``cin_layers[k]`` feature maps, each a weighted sum of the outer products X^{k−1}_i ∘ X^0_j;
maps are sum-pooled over d into p⁺. logit = Σ_f w_f(x_f) + b + w_cinᵀ p⁺ + DNN(⊕_f e_f)
(paper eq. 9). ``dnn.hidden=()`` and ``first_order=False`` leave CIN alone, the AutoInt paper's "CIN"
baseline (its Table 3 count, 1.9·10⁶ on Criteo, matches 3 layers of 200 maps with split-half and
no bias). Defaults: 3 × 200 maps (the paper's Criteo depth/width), split-half and identity
activation (the paper's choice; FuxiCTR uses neither split nor activation), DNN 200-80 ReLU as the
repo's other baselines.
"""
from typing import Sequence

import flax.linen as nn

from ctrjax.data.schema import Schema
from ctrjax.layers import DNN, FeatureEmbedding
from ctrjax.layers.interaction import CIN, FirstOrder, field_vectors


class Model(nn.Module):
  schema: Schema
  embed_dim: int = 16
  pooling: str = "mean"
  cin_layers: Sequence[int] = (200, 200, 200)
  split_half: bool = True
  cin_activation: str = "identity"
  first_order: bool = True
  dnn: DNN = DNN((200, 80))          # hidden () = no DNN
  init_std: float = 0.02

  @nn.compact
  def __call__(self, batch: dict, train: bool = False) -> dict:
    emb = FeatureEmbedding(self.schema, self.embed_dim, nn.initializers.truncated_normal(self.init_std),
                           name="embedding")(batch)
    fields = field_vectors(emb, batch, self.pooling)
    pooled = CIN(self.cin_layers, self.split_half, self.cin_activation, name="cin")(fields, train)
    logit = nn.Dense(1, kernel_init=nn.initializers.xavier_normal(), name="cin_output")(pooled)[:, 0]
    if self.first_order:
      logit = logit + FirstOrder(self.schema, name="first_order")(batch)
    if self.dnn.hidden:
      logit = logit + self.dnn.tower(output_dim=1)(fields.reshape(fields.shape[0], -1), train)[:, 0]
    return {"logit": logit}
