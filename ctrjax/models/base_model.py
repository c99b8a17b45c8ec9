"""DIN's BaseModel (Embedding & MLP, DIN paper §4.2).

A behaviour is the concatenation of its fields' embeddings (e.g. item id ⊕ genres); the user's
behaviours are sum-pooled over non-padding positions (paper eq. 1); user, candidate item, pooled
behaviours and context are concatenated and fed to an MLP (200-80, PReLU in the paper's setup).
id_dropout is the paper's "Dropout" regulariser (§6.5: 50% of the feature ids of each sample).
"""
from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp

from ctrjax.data.schema import Schema
from ctrjax.layers import FeatureEmbedding, MLP, dense_initializer, pooled_fields


class Model(nn.Module):
  schema: Schema
  embed_dim: int = 16
  hidden: Sequence[int] = (200, 80)
  activation: str = "prelu"
  dropout: float = 0.0
  batch_norm: bool = False
  batch_norm_momentum: float = 0.99       # BatchNorm running-average decay (PyTorch's 0.1 = 0.9)
  dnn_kernel_init: str = "xavier_normal"  # DNN kernels; 'torch_linear': PyTorch's nn.Linear default
  pooling: str = "sum"          # 'sum' (paper) or 'mean'
  init_std: float = 0.02
  id_dropout: float = 0.0

  @nn.compact
  def __call__(self, batch: dict, train: bool = False) -> dict:
    emb = FeatureEmbedding(self.schema, self.embed_dim, nn.initializers.truncated_normal(self.init_std),
                           self.id_dropout, name="embedding")(batch, train)
    fields = pooled_fields(emb, batch["behavior"]["mask"] if emb["behavior"] else None, self.pooling)
    x = jnp.concatenate(list(fields.values()), axis=-1)
    logit = MLP(self.hidden, self.activation, self.dropout, self.batch_norm,
                batch_norm_momentum=self.batch_norm_momentum,
                kernel_init=dense_initializer(self.dnn_kernel_init), output_dim=1,
                name="mlp")(x, train)
    return {"logit": logit[:, 0]}
