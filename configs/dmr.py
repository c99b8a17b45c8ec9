"""DMR (Deep Match to Rank, AAAI'20; the FESeq paper's baseline) on FESeq's MovieLens data.

  ./run.sh configs/dmr.py                          # ml-latest-small, early stopping on valid AUC
  ./run.sh configs/dmr.py:quick                    # 2 epochs
  ./run.sh configs/dmr.py --config.model.aux_loss_weight=0

The official code's setting (lvze92/DMR): user-to-item network (causal user vectors, relevance
u_T · v'_c with a separate output embedding, auxiliary match loss × 0.1 with negatives drawn from
the batch) and item-to-item network (target attention with position, relevance Σ s_t), attention
MLPs 80-40 sigmoid, position width 8, DNN 512-256-128 PReLU over the fields, Σ e_t, e_c ∘ Σ e_t, the
interest and both relevances. Data as configs/feseq.py (10 behaviours; the time gaps are not
used). Adam 1e-3, batch 128. Details: ctrjax/models/dmr.py.
"""
import ml_collections

from configs import base, feseq


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  c = base.get_config(arg)
  feseq.use_feseq_data(c)
  c.model_name = "dmr"
  c.model = ml_collections.ConfigDict(dict(
      embed_dim=16,
      position_dim=8,
      attention_hidden=(80, 40),       # official; the FESeq repo's port uses 512-256 ReLU
      attention_activation="sigmoid",
      aux_loss_weight=0.1,             # official; 0 = no match loss
      num_negatives=5,                 # behaviours of the batch per row
      use_sum_pooling_features=True,   # Σ e_t and e_c ∘ Σ e_t in the DNN input (official)
      time_gap_field="hist_time_gap",  # left out of the tokens
      hidden=(512, 256, 128),
      activation="prelu",
      dropout=0.0,
      batch_norm=False,                # True: BatchNorm in each hidden layer (FESeq repo's port)
      batch_norm_momentum=0.99,        # its running-average decay (PyTorch's momentum 0.1 = 0.9)
      dnn_kernel_init="xavier_normal", # DNN kernels; torch_linear = PyTorch's nn.Linear default
      init_std=0.02))
  c.batch_size = 128
  c.optimizer.learning_rate = 1e-3
  return c
