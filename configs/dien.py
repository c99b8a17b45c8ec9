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
from ctrjax.models import default_config


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  c = base.get_config(arg)
  c.model_name = "dien"
  c.model = default_config("dien")
  c.batch_size = 128
  c.optimizer.learning_rate = 1e-3
  return c
