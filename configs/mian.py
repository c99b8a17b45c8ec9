"""MIAN (Multi-Interactive Attention Network, WSDM'21) with the paper's §4.3 settings.

  ./run.sh configs/mian.py                        # ml-latest-small, early stopping on valid AUC
  ./run.sh configs/mian.py:quick                  # 2 epochs
  ./run.sh configs/mian.py --config.dataset.name=ml-100k

Adam 1e-3 (β 0.9/0.999), batch 128, behaviour length 30, one Pre-LN Transformer block with 8 heads,
MLP 32-8 with ReLU and dropout 0.2, L2 1e-3 on the embedding rows a batch touches (mini-batch aware,
DIN eq. 4-7), truncated-normal(0.02) embeddings, early stopping on valid AUC (patience 2).
One deviation: Dense kernels are Xavier-normal (model.dense_init), because with the paper's 0.02
everywhere the ReLU MLP dies within a few Adam steps on some seeds (see ctrjax/models/mian.py).
"""
import ml_collections

from configs import base


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  c = base.get_config(arg)
  c.model_name = "mian"
  c.model = ml_collections.ConfigDict(dict(
      embed_dim=16,                    # per-field width d (tokens are concatenations of fields)
      num_heads=8,
      ffn_mult=4,                      # Transformer FFN hidden = ffn_mult x token width
      dropout=0.2,
      hidden=(32, 8),
      use_ibim=True,                   # item-behaviour interaction (Transformer + attention pooling)
      use_iuim=True,                   # item-user interaction
      use_icim=True,                   # item-context interaction
      use_gim=True,                    # global interaction over the 7 representations
      use_behavior_mean=True,          # e_b, the mean behaviour embedding, as a GIM token
      ibim_encoder="pre_ln",           # pre_ln | post_ln | none (Table 4)
      position_embedding=True,         # learned position embedding on the behaviour sequence
      score="tanh",                    # tanh(V w + b) (paper) | linear
      gim_combine="sum",               # sum: project to a common width | concat
      gim_width=ml_collections.FieldReference(None, field_type=int),  # sum's width (None: 2 x item token)
      init_std=0.02,                   # truncated-normal std of the embeddings (paper)
      dense_init="xavier_normal"))     # Dense kernels; "truncated_normal" = the paper (collapses, see mian.py)
  c.batch_size = 128
  c.regularizer.mode = "mba"
  c.regularizer.weight = 1e-3
  return c
