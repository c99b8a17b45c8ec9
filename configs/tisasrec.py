"""TiSASRec for CTR (WSDM'20; the FESeq paper's baseline) on FESeq's MovieLens data.

  ./run.sh configs/tisasrec.py                     # ml-latest-small, early stopping on valid AUC
  ./run.sh configs/tisasrec.py:quick               # 2 epochs

The FESeq repository's TiSASRec_eleme setting: SASRec's tokens with time-interval-aware attention
(relative intervals in units of the row's smallest interval, clipped at 1,024; position and interval
key/value embeddings), one causal Post-LN block with 1 head, attention dropout 0.4, dropout 0.2,
target pooling, MLP 1024-512-256 LeakyReLU. Data as configs/feseq.py (10 behaviours, time gaps in
minutes). Adam 1e-3, batch 128. Details: ctrjax/models/tisasrec.py.
"""
import ml_collections

from configs import base, feseq
from ctrjax.models import default_config


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  c = base.get_config(arg)
  feseq.use_feseq_data(c)
  c.model_name = "tisasrec"
  c.model = default_config("tisasrec")
  c.batch_size = 128
  c.optimizer.learning_rate = 1e-3
  return c
