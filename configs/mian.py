"""MIAN (Multi-Interactive Attention Network, WSDM'21) with the paper's §4.3 settings.

  ./run.sh configs/mian.py                        # ml-latest-small, early stopping on valid AUC
  ./run.sh configs/mian.py:quick                  # 2 epochs
  ./run.sh configs/mian.py --config.dataset.name=ml-100k
  ./run.sh tune configs/mian.py --trials 20       # tuned on valid AUC (MLP widths from 32-8), then 5 seeds

Adam 1e-3 (β 0.9/0.999), batch 128, behaviour length 30, one Pre-LN Transformer block with 8 heads,
MLP 32-8 with ReLU and dropout 0.2, L2 1e-3 on the embedding rows a batch touches (mini-batch aware,
DIN eq. 4-7), truncated-normal(0.02) embeddings, early stopping on valid AUC (patience 2).
One deviation: Dense kernels are Xavier-normal (model.dense_init and model.dnn.kernel_init), because
with the paper's 0.02 everywhere the ReLU MLP dies within a few Adam steps on some seeds (see
ctrjax/models/mian.py).
"""
import ml_collections

from configs import base
from configs.common import SearchSpace, Uniform
from ctrjax.models import default_config


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  c = base.get_config(arg)
  c.model_name = "mian"
  c.model = default_config("mian")
  c.batch_size = 128
  c.regularizer.mode = "mba"
  c.regularizer.weight = 1e-3
  return c


def get_search_space(arg: str | None = None) -> SearchSpace:
  """BaseModel's space (configs/base.py: MLP widths 32-8 to 400-200, the paper's 32-8 among them)
  and the dropout inside MIAN's Transformer and attention (the paper: 0.2)."""
  return {**base.get_search_space(), "model.dropout": Uniform(0.0, 0.5)}
