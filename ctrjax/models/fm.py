"""FM (Rendle, ICDM'10): logit = b + Σ_f w_f(x_f) + Σ_{i<j} ⟨e_i, e_j⟩.

Field vectors e_f [B, d] as in ``field_vectors`` (multi-valued fields and the history mean-pooled,
each one field, as FuxiCTR; the original FM would give every history id its own feature with value
1/n); numeric fields x·v. Pairwise term by the sum-square trick (``fm_pairwise``); first-order
weights per id (``FirstOrder``, N(0, 1e-4)).
"""
import flax.linen as nn

from ctrjax.data.schema import Schema
from ctrjax.layers import FeatureEmbedding
from ctrjax.layers.interaction import FirstOrder, field_vectors, fm_pairwise


class Model(nn.Module):
  schema: Schema
  embed_dim: int = 16
  pooling: str = "mean"
  init_std: float = 0.02

  @nn.compact
  def __call__(self, batch: dict, train: bool = False) -> dict:
    emb = FeatureEmbedding(self.schema, self.embed_dim, nn.initializers.truncated_normal(self.init_std),
                           name="embedding")(batch)
    fields = field_vectors(emb, batch, self.pooling)
    return {"logit": FirstOrder(self.schema, name="first_order")(batch) + fm_pairwise(fields)}
