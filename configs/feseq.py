"""FESeq (Feature Interaction-Enhanced Sequential Transformer, 2024) with the paper's settings
(the official code's FESeq_3_eleme config) on MovieLens with aligned, timed behaviour fields.

  ./run.sh configs/feseq.py                        # ml-latest-small, early stopping on valid AUC
  ./run.sh configs/feseq.py:quick                  # 2 epochs
  ./run.sh configs/feseq.py --config.dataset.name=ml-100k --config.model.causal=False

Data: the MovieLens prep with dataset.sequence_fields='feseq' (data_prep/movielens.py): behaviours
are (movie, genres, hour, weekday) with the time gap to the candidate in minutes, histories of the
10 most recent ratings (the paper's Ele.me length). The target token's hour and weekday are the
candidate's context fields; user fields, release year and month are the non-sequence fields.
Model: 2 input and 2 target-item interacting layers (1 head, dropout 0.1), learned reverse position
and 4,001 one-minute time-interval buckets concatenated to each token, one causal Transformer layer
(8 heads, LeakyReLU FFN, no LayerNorm, attention dropout 0.1), scaled bilinear attention pooling
(d_h 128, W = I at init), MLP 1024-512-256 LeakyReLU. Adam 1e-3 and batch 128 like the other
models (paper: batch 4096, embedding L2 0.1 on the full tables, which our batch size and dataset
size do not call for). Details: ctrjax/models/feseq.py.
"""
import ml_collections

from configs import base
from ctrjax.models import default_config

MAX_LEN = 10                          # the paper's history length on Ele.me (Table 2)


def use_feseq_data(c: ml_collections.ConfigDict) -> None:
  """The dataset of the FESeq family (FESeq, SASRec, TiSASRec, DMR): timed, aligned behaviours."""
  c.dataset.sequence_fields = "feseq"
  c.dataset.max_len = MAX_LEN


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  c = base.get_config(arg)
  use_feseq_data(c)
  c.model_name = "feseq"
  c.model = default_config("feseq")
  c.batch_size = 128
  c.optimizer.learning_rate = 1e-3
  return c
