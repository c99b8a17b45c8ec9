"""SASRec for CTR (ICDM'18; the FESeq paper's baseline) on FESeq's MovieLens data.

  ./run.sh configs/sasrec.py                       # ml-latest-small, early stopping on valid AUC
  ./run.sh configs/sasrec.py:quick                 # 2 epochs
  ./run.sh configs/sasrec.py --config.model.norm=pre_ln

The FESeq repository's SASRec_eleme setting: behaviour tokens (movie, genres, hour, weekday) and
the candidate's token last, plus a learned reverse position, two causal Post-LN blocks with 8
heads (ReLU FFN, attention dropout 0.1), the candidate's output into an MLP 1024-512-256 ReLU with
the non-sequence fields. Data as configs/feseq.py (10 behaviours; the time gaps are not used).
Adam 1e-3, batch 128. Details: ctrjax/models/sasrec.py.
"""
import ml_collections

from configs import base, feseq
from ctrjax.models import default_config


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  c = base.get_config(arg)
  feseq.use_feseq_data(c)
  c.model_name = "sasrec"
  c.model = default_config("sasrec")
  c.batch_size = 128
  c.optimizer.learning_rate = 1e-3
  return c
