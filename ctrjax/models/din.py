"""DIN: Deep Interest Network (Zhou et al., KDD'18).

BaseModel with the sum pooling of behaviours replaced by the local activation unit (paper §4.3):
the candidate, as a behaviour-shaped token q (its fields on the behaviours' tables), weights
each behaviour k_t by a_t = MLP([q ; k_t ; q − k_t ; q ∘ k_t]) and the user's interest is
Σ_t a_t k_t. The MLP input is [user fields ; candidate fields ; interest ; context fields].

Paper settings (Table 3): attention MLP 80-40, prediction MLP 200-80, PReLU ("DIN") or Dice
("DIN with Dice") in both. Decisions, each a field:
  * attention_weighting 'raw' (the paper: scores not normalised, padding 0) or 'softmax' (both
    official codes); scale_by_sqrt_d divides softmax scores by √D (the DIN demo).
  * attention_activation None = the same as ``dnn.activation``; the official codes use sigmoid there.
  * id_dropout: the paper's "Dropout" regulariser (§6.5).
Returns {"logit": [B], "attention": {"din": a [B, T]}}.
"""
from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp

from ctrjax.data.schema import Schema
from ctrjax.layers import DNN, FeatureEmbedding, LocalActivationUnit, behavior_aligned_item


class Model(nn.Module):
  schema: Schema
  embed_dim: int = 16
  dnn: DNN = DNN((200, 80), "prelu")       # activation 'prelu' (DIN) or 'dice' (DIN with Dice)
  attention_hidden: Sequence[int] = (80, 40)
  attention_activation: str | None = None    # None: same as dnn.activation
  attention_weighting: str = "raw"           # 'raw' (paper) or 'softmax' (official codes)
  scale_by_sqrt_d: bool = False
  init_std: float = 0.02
  id_dropout: float = 0.0

  def __post_init__(self):
    super().__post_init__()
    if not self.schema.group("behavior"):
      raise ValueError("DIN needs behaviour fields; the dataset has none (use model_name='base_model')")

  @nn.compact
  def __call__(self, batch: dict, train: bool = False) -> dict:
    emb = FeatureEmbedding(self.schema, self.embed_dim, nn.initializers.truncated_normal(self.init_std),
                           self.id_dropout, name="embedding")(batch, train)
    keys = jnp.concatenate(list(emb["behavior"].values()), axis=-1)                 # [B, T, D_b]
    query = behavior_aligned_item(self.schema, emb)                                 # [B, D_b]
    interest, weights = LocalActivationUnit(
        tuple(self.attention_hidden), self.attention_activation or self.dnn.activation,
        self.attention_weighting, self.scale_by_sqrt_d, name="attention")(
            query, keys, batch["behavior"]["mask"], train)
    parts = [*emb["user"].values(), *emb["item"].values(), interest, *emb["context"].values()]
    logit = self.dnn.tower(output_dim=1)(jnp.concatenate(parts, axis=-1), train)
    return {"logit": logit[:, 0], "attention": {"din": weights}}
