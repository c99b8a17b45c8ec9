"""Criteo (Kaggle Display Advertising Challenge) -> ctrjax dataset directory, AutoInt protocol.

Usage:
  python -m data_prep.criteo [--raw FILE_OR_DIR] [--min_count 10] [--numeric value|bucket]
                             [--vocab_rows train|all] [--seed 2018] [--chunk_mb 16] [--out_root R] [--force]
or ``prepare(out_root, raw_dir=..., min_count=..., numeric=..., vocab_rows=..., seed=...)`` from Python.

Raw input: Kaggle's ``train.txt`` (45,840,617 lines, 11 GB; a directory holding it also works):
label, I1..I13 (integer counts, may be empty), C1..C26 (8-hex-digit hashes, may be empty),
tab-separated, no header. The same columns with a header line ``label,I1,...,C26`` (comma- or
tab-separated, numbers possibly written "260.0") are accepted too: DeepCTR's and torch-rechub's
``criteo_sample`` files are in that form. Files encoded by another library (PaddleRec's
``feat_idx:`` lines) are refused on line 1. Default: the first 10,000 lines of train.txt in
``$CTRJAX_SHARED/data/criteo-kaggle-first10k`` (AutoInt's ``train_examples.txt``).

Protocol (AutoInt §5.1; mechanics, id layout and the malformed-line policy in data_prep/tabular.py):
  * C1..C26: values seen fewer than ``min_count`` (10) times -> one unknown id per field (1);
    empty -> the missing id (2).
  * I1..I13: z -> floor(ln(z)^2) if z > 2, else z. ``numeric="value"`` (default, as AutoInt's code:
    each field is one learned vector scaled by the value; missing -> 0) or ``"bucket"`` (the
    transformed value, floored, as a categorical token, thresholded like C fields; missing -> 2).
  * Random 80/10/10 split of the lines, seed 2018.
  * 39 fields, all in group "context"; no GAUC grouping exists (``gauc_group=''``).

Deviations from AutoInt's scripts (featureRec/data/Dataprocess/Criteo/preprocess.py, Kfold_split/,
KDD2012/scale.py):
  * Threshold: the paper drops values "appearing in less than 10 instances" (kept iff count >= 10,
    done here); the Criteo script keeps a value only once its count exceeds 10 (>= 11).
  * Counting rows: the train split by default; the script counts the whole file
    (``vocab_rows="all"``).
  * Missing C value: its own id 2; the script gives '' an id but multiplies its embedding by 0.
  * Split: a plain seeded permutation (the paper's "randomly select 80 %"); the scripts use
    StratifiedKFold(10, shuffle, seed 2018) folds (test = fold 1, valid = fold 2), stratified by label.
  * Malformed lines are skipped and counted; the script has no such check.
"""
from __future__ import annotations

import os
import pathlib

from data_prep import tabular
from data_prep.common import one_at_a_time

NUMERIC = tuple(f"I{i}" for i in range(1, 14))
CATEGORICAL = tuple(f"C{i}" for i in range(1, 27))
MIN_COUNT = 10
LAYOUT = tabular.Layout(
    dataset="criteo", columns=("label", *NUMERIC, *CATEGORICAL), label="label", min_count=MIN_COUNT,
    default_raw="data/criteo-kaggle-first10k/criteo_train_first10000.txt", train_files=("train.txt",),
    numeric=NUMERIC, headerless_sep="\t")


@one_at_a_time
def prepare(out_root: str | os.PathLike = "data/prepared", *, raw_dir: str | os.PathLike = "",
            min_count: int = MIN_COUNT, numeric: str = "value", vocab_rows: str = "train",
            seed: int = tabular.DEFAULT_SEED, chunk_bytes: int = tabular.DEFAULT_CHUNK_BYTES,
            force: bool = False) -> pathlib.Path:
  """Prepares (or reuses) ``<out_root>/criteo-<raw stem>-min<k>-<numeric>[-allrows]-seed<s>``; returns it."""
  return tabular.prepare(LAYOUT, out_root, raw_dir, min_count, vocab_rows, seed, chunk_bytes, force, numeric)


def main(argv=None) -> pathlib.Path:
  return tabular.main(LAYOUT, __doc__.splitlines()[0], argv)


if __name__ == "__main__":
  main()
