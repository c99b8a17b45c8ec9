"""NFM, Neural Factorization Machine (He & Chua, SIGIR'17).

logit = b + Σ_f w_f(x_f) + MLP(f_BI), f_BI = Σ_{i<j} e_i ∘ e_j [B, d] (Bi-Interaction pooling,
``bi_interaction``), MLP = hidden layers then a linear output (paper eq. 2–4). One hidden layer
of 200 by default (as the paper recommends and AutoInt §5.1.4 uses). Field vectors as in
``field_vectors``. The paper applies dropout (and optionally BatchNorm) to f_BI too; here
``dropout`` acts on f_BI and on every hidden layer, ``batch_norm`` on the hidden layers.
"""
from typing import Sequence

import flax.linen as nn

from ctrjax.data.schema import Schema
from ctrjax.layers import FeatureEmbedding, MLP, dense_initializer
from ctrjax.layers.interaction import FirstOrder, bi_interaction, field_vectors


class Model(nn.Module):
  schema: Schema
  embed_dim: int = 16
  pooling: str = "mean"
  hidden: Sequence[int] = (200,)
  activation: str = "relu"
  dropout: float = 0.0
  batch_norm: bool = False
  batch_norm_momentum: float = 0.99       # BatchNorm running-average decay (PyTorch's 0.1 = 0.9)
  dnn_kernel_init: str = "xavier_normal"  # DNN kernels; 'torch_linear': PyTorch's nn.Linear default
  init_std: float = 0.02

  @nn.compact
  def __call__(self, batch: dict, train: bool = False) -> dict:
    emb = FeatureEmbedding(self.schema, self.embed_dim, nn.initializers.truncated_normal(self.init_std),
                           name="embedding")(batch)
    pooled = nn.Dropout(self.dropout, deterministic=not train)(
        bi_interaction(field_vectors(emb, batch, self.pooling)))
    deep = MLP(self.hidden, self.activation, self.dropout, self.batch_norm,
               batch_norm_momentum=self.batch_norm_momentum,
               kernel_init=dense_initializer(self.dnn_kernel_init), output_dim=1,
               name="mlp")(pooled, train)[:, 0]
    return {"logit": FirstOrder(self.schema, name="first_order")(batch) + deep}
