"""FESeq (Feature Interaction-Enhanced Sequential Transformer, 2024) with the paper's settings
(FESeq_3_eleme, models.md §6.3) on MovieLens with aligned, timed behaviour fields.

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

MAX_LEN = 10                          # the paper's history length on Ele.me (Table 2)


def use_feseq_data(c: ml_collections.ConfigDict) -> None:
  """The dataset of the FESeq family (FESeq, SASRec, TiSASRec, DMR): timed, aligned behaviours."""
  c.dataset.sequence_fields = "feseq"
  c.dataset.max_len = MAX_LEN


def model_config() -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict(
      embed_dim=16,                    # d: every field, the position and the time embedding
      interaction_layers=2,            # M: input-field interacting layers (0 = w/o Int)
      target_interaction_layers=2,     # N: target-item interacting layers (the pooling query)
      interaction_heads=1,
      interaction_dropout=0.1,         # on the interacting layers' attention weights
      interaction_layer_norm=True,     # official (FuxiCTR); False = paper eq. 3
      interact_non_sequence=True,      # broadcast non-sequence fields inside the interaction (Table 5)
      use_position=True,               # reverse-order learned position (Table 6)
      use_time=True,                   # linear time-interval embedding (Table 6)
      time_gap_field="hist_time_gap",  # minutes in the MovieLens prep
      num_time_buckets=4001,           # clip(gap / width, 0, 4000)
      time_bucket_width=1.0,           # gap units (minutes) per bucket
      time_log_base=0.0,               # 0 = linear; 2 = the official FESeq_5 log buckets
      causal=True,                     # Table 7
      num_heads=8,
      num_layers=1,
      refiner_norm="none",             # official layer_norm=False; post_ln | pre_ln
      attention_dropout=0.1,
      dropout=0.0,                     # Transformer, pooling projections and MLP
      pooling="attention",             # attention | target | mean (Table 8)
      pooling_score="bilinear",        # bilinear | dot | din (Table 9)
      pooling_scale=True,              # / √pooling_dim (Table 10)
      pooling_dim=128,                 # d_h (Ele.me 128, Bundle 32)
      din_hidden=(512, 256, 128),      # MLP of pooling_score='din'
      hidden=(1024, 512, 256),
      activation="leaky_relu",
      init_std=0.02))                  # truncated-normal std of the embeddings and tables


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  c = base.get_config(arg)
  use_feseq_data(c)
  c.model_name = "feseq"
  c.model = model_config()
  c.batch_size = 128
  c.optimizer.learning_rate = 1e-3
  return c
