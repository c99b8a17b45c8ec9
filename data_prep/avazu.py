"""Avazu (Kaggle Click-Through Rate Prediction) -> ctrjax dataset directory, AutoInt protocol.

Usage:
  python -m data_prep.avazu [--raw FILE_OR_DIR] [--min_count 5] [--vocab_rows train|all]
                            [--seed 2018] [--chunk_mb 16] [--out_root R] [--force]
or ``prepare(out_root, raw_dir=..., min_count=..., vocab_rows=..., seed=...)`` from Python.

Raw input: Kaggle's decompressed ``train`` / ``train.csv`` (40,428,967 rows; a directory holding
it also works): the header ``id,click,hour,C1,banner_pos,site_id,...,C14..C21``, then
comma-separated values; ``hour`` is YYMMDDHH in UTC. Kaggle's test file (no click) and files
encoded by another library (torch-rechub's ``label,feat_1,...`` ids) are refused on line 1.
Default: DeepCTR's 100-row ``avazu_sample.txt`` in ``$CTRJAX_SHARED/data/avazu-samples``.

Protocol (AutoInt §5.1; mechanics, id layout and the malformed-line policy in data_prep/tabular.py):
  * The 21 columns C1, banner_pos, site_*, app_*, device_*, C14..C21 are categorical tokens: values
    seen fewer than ``min_count`` (5) times -> one unknown id per field (1); empty -> missing (2).
  * ``hour`` -> two fixed fields: ``hour`` (hour of day 0-23, id = hour + 2) and ``weekday``
    (Mon = 0 .. Sun = 6, id = weekday + 2); a line whose hour is not a valid YYMMDDHH is malformed.
  * ``id`` is dropped. 23 fields in all, every one in group "context"; no GAUC grouping
    (``gauc_group=''``).
  * Random 80/10/10 split of the lines, seed 2018.

Deviations from AutoInt's script (featureRec/data/Dataprocess/Avazu/preprocess.py): it keeps all 23
non-label columns as categorical fields, including ``id`` (unique per row, so a constant unknown
field) and the raw YYMMDDHH ``hour`` (one value per hour of the 10 days); here ``id`` is dropped and
``hour`` becomes hour of day + weekday, as is common practice. Its threshold (count >= 5) matches.
Counting rows, missing values, split and malformed lines differ as listed in data_prep/criteo.py.
"""
from __future__ import annotations

import os
import pathlib

import numpy as np

from data_prep import tabular
from data_prep.common import one_at_a_time

CATEGORICAL = ("C1", "banner_pos", "site_id", "site_domain", "site_category", "app_id", "app_domain",
               "app_category", "device_id", "device_ip", "device_model", "device_type", "device_conn_type",
               *(f"C{i}" for i in range(14, 22)))
MIN_COUNT = 5
WEEKDAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")


def hour_fields(hour: np.ndarray) -> tuple[dict[str, np.ndarray], np.ndarray]:
  """YYMMDDHH values -> ({"hour": 0..23, "weekday": Mon=0..6}, rows that are no valid date-hour)."""
  h = np.where((hour >= 0) & (hour <= 99_999_999), hour, 0).astype(np.int64)
  yy, mm, dd, hh = h // 1_000_000, h // 10_000 % 100, h // 100 % 100, h % 100
  bad = (h != hour) | (mm < 1) | (mm > 12) | (dd < 1) | (hh > 23)
  month = np.where(bad, 0, (2000 + yy - 1970) * 12 + mm - 1).astype("datetime64[M]")
  day = month.astype("datetime64[D]") + np.where(bad, 0, dd - 1)
  bad |= day.astype("datetime64[M]") != month            # e.g. 31 April
  weekday = (day.astype(np.int64) + 3) % 7               # 1970-01-01 was a Thursday
  return {"hour": np.where(bad, 0, hh), "weekday": np.where(bad, 0, weekday)}, bad


LAYOUT = tabular.Layout(
    dataset="avazu", columns=("id", "click", "hour", *CATEGORICAL), label="click", min_count=MIN_COUNT,
    default_raw="data/avazu-samples/deepctr_avazu_sample.txt", train_files=("train.csv", "train"),
    dropped=("id",),
    derived=tabular.Derived("hour", (("hour", tuple(map(str, range(24))), "UTC hour of day; id = hour + 2"),
                                     ("weekday", WEEKDAYS, "UTC weekday (Mon=0); id = weekday + 2")),
                            hour_fields))


@one_at_a_time
def prepare(out_root: str | os.PathLike = "data/prepared", *, raw_dir: str | os.PathLike = "",
            min_count: int = MIN_COUNT, vocab_rows: str = "train", seed: int = tabular.DEFAULT_SEED,
            chunk_bytes: int = tabular.DEFAULT_CHUNK_BYTES, force: bool = False) -> pathlib.Path:
  """Prepares (or reuses) ``<out_root>/avazu-<raw stem>-min<k>[-allrows]-seed<s>``; returns it."""
  return tabular.prepare(LAYOUT, out_root, raw_dir, min_count, vocab_rows, seed, chunk_bytes, force)


def main(argv=None) -> pathlib.Path:
  return tabular.main(LAYOUT, __doc__.splitlines()[0], argv)


if __name__ == "__main__":
  main()
