"""AutoInt and AutoInt+ (Song et al., CIKM'19).

Input: one d-vector per field, e_m (FeatureEmbedding: categorical V_m x_m, multi-valued fields the
mean of their ids' vectors (eq. 3), numeric v_m·x_m (eq. 4); a behaviour history is one
mean-pooled multi-hot field, ``pooling``). L interacting layers (InteractingLayer; eq. 5–8 with
``variant='paper'``, the official code's ReLU Q/K/V, 1/√d' scaling and LayerNorm with
'official'), then eq. 9: logit = wᵀ(e^Res_1 ⊕ … ⊕ e^Res_M) + b. AutoInt+ (``dnn.hidden`` non-empty)
adds a feed-forward network over the flattened embeddings, trained jointly: logit += DNN(⊕_m e_m)
(the official code: sum of the two logits).

Decisions the paper leaves open: Dense kernels are Xavier-normal (the repo's convention; the
official code uses Glorot-uniform and N(0, √(2/(n+1))) for the output layer), embeddings
truncated-normal(init_std). The paper does not give AutoInt+'s widths ("a two-layer feed-forward
network"); the official Criteo script uses 400-400. Dropout: ``attention_dropout`` on the attention
weights and ``embedding_dropout`` on e_m (official keep_prob[0], keep_prob[1]), ``dropout`` in the
DNN. out["attention"] = {"layer<l>": α [B, H, F, F]}: row m of head h is α^h_{m,·} (eq. 5) over
the fields in ``field_names(schema)`` order, for heat maps like the paper's Figure 7.
"""
import flax.linen as nn

from ctrjax.data.schema import Schema
from ctrjax.layers import DNN, FeatureEmbedding
from ctrjax.layers.interaction import InteractingLayer, field_vectors


class Model(nn.Module):
  schema: Schema
  embed_dim: int = 16
  pooling: str = "mean"
  num_layers: int = 3
  num_heads: int = 2
  attention_dim: int = 32            # d', per head: each layer outputs num_heads · d' per field
  residual: bool = True
  variant: str = "paper"             # paper (eq. 5-8) | official (ReLU Q/K/V, 1/√d', LayerNorm)
  attention_dropout: float = 0.0
  embedding_dropout: float = 0.0
  dnn: DNN = DNN()                   # hidden () = AutoInt; widths = AutoInt+ (joint DNN)
  init_std: float = 0.02

  @nn.compact
  def __call__(self, batch: dict, train: bool = False) -> dict:
    emb = FeatureEmbedding(self.schema, self.embed_dim, nn.initializers.truncated_normal(self.init_std),
                           name="embedding")(batch)
    fields = nn.Dropout(self.embedding_dropout, deterministic=not train)(
        field_vectors(emb, batch, self.pooling))                                # [B, F, d]
    x, attention = fields, {}
    for layer in range(self.num_layers):
      x, attention[f"layer{layer}"] = InteractingLayer(
          self.num_heads, self.attention_dim, self.residual, self.variant, self.attention_dropout,
          name=f"interacting{layer}")(x, train)
    logit = nn.Dense(1, kernel_init=nn.initializers.xavier_normal(), name="output")(
        x.reshape(x.shape[0], -1))[:, 0]
    if self.dnn.hidden:
      logit = logit + self.dnn.tower(output_dim=1)(fields.reshape(fields.shape[0], -1), train)[:, 0]
    return {"logit": logit, "attention": attention}
