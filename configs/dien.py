"""DIEN (Deep Interest Evolution Network, AAAI'19) with the official code's settings.

  ./run.sh configs/dien.py                        # ml-latest-small, early stopping on valid AUC
  ./run.sh configs/dien.py:quick                  # 2 epochs
  ./run.sh configs/dien.py --config.model.gru_type=agru --config.model.augru_variant=paper

Adam 1e-3, batch 128 (official; the official ×0.5 learning-rate decay per epoch over 3 epochs is
replaced by the base config's early stopping), GRU interest extractor with the auxiliary loss
(weight 1, negatives drawn from the batch's behaviours), AUGRU interest evolution with the official
din_fcn attention (80-40 sigmoid), DNN 200-80 with Dice. History length 30 (the dataset default;
official 100). Every deviation from the paper and the official code: ctrjax/models/dien.py.
"""
import ml_collections

from configs import base


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  c = base.get_config(arg)
  c.model_name = "dien"
  c.model = ml_collections.ConfigDict(dict(
      embed_dim=16,                    # per-field width d (behaviour token = item id ⊕ genres)
      gru_units=ml_collections.FieldReference(None, field_type=int),  # GRU width (None: token width)
      gru_type="augru",                # interest evolving: gru | aigru | agru | augru
      augru_variant="official_tf",     # official_tf (VecAttGRUCell) | paper (eq. 8: a = 0 keeps h)
      attention_type="din_fcn",        # din_fcn (official) | bilinear (paper: h_t W e_a)
      attention_hidden=(80, 40),
      attention_activation="sigmoid",
      use_sum_pooling_features=True,   # Σ e_t and e_a ∘ Σ e_t in the DNN input (official)
      hidden=(200, 80),
      activation="dice",
      dropout=0.0,
      batch_norm=False,
      batch_norm_momentum=0.99,        # BatchNorm running-average decay (PyTorch's momentum 0.1 = 0.9)
      dnn_kernel_init="xavier_normal", # DNN kernels; torch_linear = PyTorch's nn.Linear default
      aux_loss_alpha=1.0,              # auxiliary-loss weight (official 1; 0 = off)
      aux_hidden=(100, 50),
      aux_activation="sigmoid",        # official; FuxiCTR uses relu
      init_std=0.02))                  # truncated-normal std of the embeddings
  c.batch_size = 128
  c.optimizer.learning_rate = 1e-3
  return c
