"""DCNv2 (Wang et al., WWW'21), as FuxiCTR's DCNv2.

x_0 = ⊕_f e_f (``field_vectors`` flattened). Cross layers, ``cross_type``:
  full: x_{l+1} = x_0 ∘ (W_l x_l + b_l) + x_l (``CrossLayerV2``, paper eq. 1);
  low_rank_mixture: x_{l+1} = Σ_i G_i(x_l) x_0 ∘ (U_i tanh(C_i tanh(V_iᵀ x_l)) + b_l) + x_l
  (``CrossLayerMix``, paper eq. 3–4, rank ``low_rank``, ``num_experts`` experts, softmax gates).
``structure`` (paper Fig. 1, FuxiCTR ``model_structure``): crossnet_only: z = x_L;
stacked: z = DNN(x_L); parallel: z = [x_L ; DNN(x_0)]; stacked_parallel: z = [DNN_s(x_L) ; DNN_p(x_0)]
(two networks with the same ``dnn`` settings; FuxiCTR lets them differ). logit = wᵀz + b.
DNN widths default to the repo baselines' 200-80 with ReLU; the paper tunes them per dataset.
"""
import flax.linen as nn
import jax.numpy as jnp

from ctrjax.data.schema import Schema
from ctrjax.layers import DNN, FeatureEmbedding
from ctrjax.layers.interaction import CrossLayerMix, CrossLayerV2, field_vectors

STRUCTURES = ("crossnet_only", "stacked", "parallel", "stacked_parallel")
CROSS_TYPES = ("full", "low_rank_mixture")


class Model(nn.Module):
  schema: Schema
  embed_dim: int = 16
  pooling: str = "mean"
  num_cross_layers: int = 3
  cross_type: str = "full"           # full | low_rank_mixture
  low_rank: int = 32
  num_experts: int = 4
  structure: str = "parallel"        # crossnet_only | stacked | parallel | stacked_parallel
  dnn: DNN = DNN((200, 80))
  init_std: float = 0.02

  def __post_init__(self):
    super().__post_init__()
    if self.structure not in STRUCTURES:
      raise ValueError(f"model.structure={self.structure!r}; choose from {STRUCTURES}")
    if self.cross_type not in CROSS_TYPES:
      raise ValueError(f"model.cross_type={self.cross_type!r}; choose from {CROSS_TYPES}")
    if self.structure != "crossnet_only" and not self.dnn.hidden:
      raise ValueError(f"model.dnn.hidden=(): structure={self.structure!r} needs DNN widths "
                       f"(or model.structure='crossnet_only')")

  @nn.compact
  def __call__(self, batch: dict, train: bool = False) -> dict:
    emb = FeatureEmbedding(self.schema, self.embed_dim, nn.initializers.truncated_normal(self.init_std),
                           name="embedding")(batch)
    fields = field_vectors(emb, batch, self.pooling)
    x0 = fields.reshape(fields.shape[0], -1)
    x = x0
    for layer in range(self.num_cross_layers):
      if self.cross_type == "full":
        x = CrossLayerV2(name=f"cross{layer}")(x0, x)
      else:
        x = CrossLayerMix(self.low_rank, self.num_experts, name=f"cross{layer}")(x0, x)

    def dnn(name, inputs):
      return self.dnn.tower(name=name)(inputs, train)

    stacked = self.structure in ("stacked", "stacked_parallel")
    parts = [dnn("stacked_mlp", x) if stacked else x]
    if self.structure in ("parallel", "stacked_parallel"):
      parts.append(dnn("parallel_mlp", x0))
    logit = nn.Dense(1, kernel_init=nn.initializers.xavier_normal(), name="output")(
        jnp.concatenate(parts, axis=-1))
    return {"logit": logit[:, 0]}
