"""Deep Crossing (Shan et al., KDD'16), the AutoInt paper's "DC" baseline.

x_0 = ⊕_f e_f (``field_vectors`` flattened, D = F·d); each residual unit
x_{l+1} = ReLU(x_l + W₂ ReLU(W₁ x_l + b₁) + b₂), W₁: D -> width, W₂: width -> D (the paper's
residual unit, ReLU after the sum as in ResNet); logit = wᵀ x_L + b. Four units of width 100 by
default (AutoInt §5.1.4: "four feed-forward layers ... 100 hidden units"). The paper's
per-feature embedding layer is the shared FeatureEmbedding here. Optional (FuxiCTR
``ResidualBlock``): ``batch_norm`` on the unit's output before the sum, ``dropout`` after the
final ReLU.
"""
from typing import Sequence

import flax.linen as nn

from ctrjax.data.schema import Schema
from ctrjax.layers import FeatureEmbedding
from ctrjax.layers.interaction import field_vectors


class Model(nn.Module):
  schema: Schema
  embed_dim: int = 16
  pooling: str = "mean"
  residual_units: Sequence[int] = (100, 100, 100, 100)   # inner width of each residual unit
  dropout: float = 0.0
  batch_norm: bool = False
  batch_norm_momentum: float = 0.99       # BatchNorm running-average decay (PyTorch's 0.1 = 0.9)
  init_std: float = 0.02

  @nn.compact
  def __call__(self, batch: dict, train: bool = False) -> dict:
    emb = FeatureEmbedding(self.schema, self.embed_dim, nn.initializers.truncated_normal(self.init_std),
                           name="embedding")(batch)
    fields = field_vectors(emb, batch, self.pooling)
    x = fields.reshape(fields.shape[0], -1)
    xavier = nn.initializers.xavier_normal()
    for unit, width in enumerate(self.residual_units):
      h = nn.relu(nn.Dense(width, kernel_init=xavier, name=f"unit{unit}_in")(x))
      h = nn.Dense(x.shape[-1], kernel_init=xavier, name=f"unit{unit}_out")(h)
      if self.batch_norm:
        h = nn.BatchNorm(use_running_average=not train, momentum=self.batch_norm_momentum,
                         name=f"unit{unit}_bn")(h)
      x = nn.Dropout(self.dropout, deterministic=not train)(nn.relu(x + h))
    return {"logit": nn.Dense(1, kernel_init=xavier, name="output")(x)[:, 0]}
