"""PNN, inner-product variant (IPNN; Qu et al., ICDM'16) as in FuxiCTR, a DIN Table 3 baseline.

Field vectors f_1..f_F [B, d] (user, item and context fields; behaviour fields sum-pooled as in
BaseModel); product layer = [f_1 ; ... ; f_F ; ⟨f_i, f_j⟩ for all i < j] -> MLP -> logit.
"""
from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp

from ctrjax.data.schema import Schema
from ctrjax.layers import FeatureEmbedding, MLP, dense_initializer
from ctrjax.layers.interaction import field_vectors, inner_products


class Model(nn.Module):
  schema: Schema
  embed_dim: int = 16
  hidden: Sequence[int] = (200, 80)
  activation: str = "prelu"
  dropout: float = 0.0
  batch_norm: bool = False
  batch_norm_momentum: float = 0.99       # BatchNorm running-average decay (PyTorch's 0.1 = 0.9)
  dnn_kernel_init: str = "xavier_normal"  # DNN kernels; 'torch_linear': PyTorch's nn.Linear default
  pooling: str = "sum"
  init_std: float = 0.02

  @nn.compact
  def __call__(self, batch: dict, train: bool = False) -> dict:
    emb = FeatureEmbedding(self.schema, self.embed_dim, nn.initializers.truncated_normal(self.init_std),
                           name="embedding")(batch)
    fields = field_vectors(emb, batch, self.pooling)                                  # [B, F, d]
    x = jnp.concatenate([fields.reshape(fields.shape[0], -1), inner_products(fields)], axis=-1)
    logit = MLP(self.hidden, self.activation, self.dropout, self.batch_norm,
                batch_norm_momentum=self.batch_norm_momentum,
                kernel_init=dense_initializer(self.dnn_kernel_init), output_dim=1,
                name="mlp")(x, train)
    return {"logit": logit[:, 0]}
