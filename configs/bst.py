"""BST (Behavior Sequence Transformer, DLP-KDD'19) with the paper's settings where they apply.

  ./run.sh configs/bst.py                         # ml-latest-small, early stopping on valid AUC
  ./run.sh configs/bst.py:quick                   # 2 epochs
  ./run.sh configs/bst.py --config.model.pooling=target

One Post-LN Transformer block with 8 heads and dropout 0.2 over the behaviours and the candidate
(last), a learned position embedding concatenated to each token (the paper's time-gap position
needs history time stamps, which the dataset keeps only as metadata), the outputs of every
position concatenated, MLP 1024-512-256 with LeakyReLU. Adam 1e-3 and batch 128 like the other
models (paper: lr 0.01, batch 256). Details: ctrjax/models/bst.py.
"""
import ml_collections

from configs import base
from ctrjax.models import default_config


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  c = base.get_config(arg)
  c.model_name = "bst"
  c.model = default_config("bst")
  c.batch_size = 128
  c.optimizer.learning_rate = 1e-3
  return c
