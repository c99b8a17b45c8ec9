"""What the ctrjax-vs-PyTorch comparison runs: models, shared hyperparameters, data layout, metrics.

Imported by both sides (the ctrjax venv and the separate torch venv), so it needs numpy and scipy
only. Every library gets the same fields (user_id, user_segment, item_id, item_cluster, hour and the
behaviour history hist_item_id, which shares the item_id table), embedding 16, batch 1024, Adam 1e-3
without weight decay or L2, the same MLP widths and activations, 1 epoch. BatchNorm in the DNNs is one
switch (``batch_norm``): off is ctrjax's and DeepCTR-Torch's default, but torch-rechub's MLP always
has it; on gives every library the same layers, ctrjax's with torch's running-average decay
(``dnn.batch_norm_momentum`` 0.9 = torch's momentum 0.1; ctrjax's default 0.99 lags after one short epoch:
test AUC 0.57-0.61 instead of 0.71-0.72 on AutoInt+, DCN and DeepFM here).
"""
from __future__ import annotations

import numpy as np
from scipy.stats import rankdata

LIBRARIES = ("ctrjax", "deepctr", "rechub")
LIBRARY_NAMES = {"ctrjax": "ctrjax", "deepctr": "DeepCTR-Torch 0.3.0", "rechub": "torch-rechub 0.9.0"}
MODELS = ("din", "dien", "bst", "autoint", "dcn", "deepfm", "xdeepfm")
SPARSE = ("user_id", "user_segment", "item_id", "item_cluster", "hour")
HISTORY = "hist_item_id"          # behaviour items; shares the item_id table
NEG_HISTORY = "neg_hist_item_id"  # DIEN's auxiliary-loss negatives (torch libraries only)
EMBED_DIM = 16
TORCH_BATCH_NORM_MOMENTUM = 0.9  # flax's running-average decay equal to torch's BatchNorm momentum 0.1
BATCH_SIZE = 1024
LEARNING_RATE = 1e-3
EPS = 1e-7

# Which library ships which model (checked in the installed wheels).
AVAILABLE = {
    "ctrjax": set(MODELS),
    "deepctr": {"din", "dien", "autoint", "dcn", "deepfm", "xdeepfm"},  # no BST
    "rechub": {"din", "dien", "bst", "autoint", "dcn", "deepfm"},       # no xDeepFM
}

# Shared architecture per model: MLP widths, attention/cross/CIN sizes, activations.
HPARAMS = {
    "din": dict(hidden=(200, 80), activation="dice", attention_hidden=(80, 40),
                attention_activation="dice", attention_softmax=False),
    "dien": dict(hidden=(200, 80), activation="dice", attention_hidden=(80, 40),
                 attention_activation="sigmoid", aux_loss_alpha=1.0),
    "bst": dict(hidden=(1024, 512, 256), activation="leaky_relu", num_heads=8, num_layers=1,
                ffn_hidden=2048, dropout=0.2),
    "autoint": dict(hidden=(400, 400), activation="relu", num_layers=3, num_heads=2),
    "dcn": dict(hidden=(200, 80), activation="relu", num_cross_layers=3),
    "deepfm": dict(hidden=(200, 80), activation="relu"),
    "xdeepfm": dict(hidden=(200, 80), activation="relu", cin_layers=(200, 200, 200)),
}

# Where a library cannot take the shared setting (the table's footnotes).
_DEVIATIONS = {
    ("deepctr", "din"): "DNN PReLU: DeepCTR-Torch's Dice in the DNN asserts a 3-D input and fails",
    ("deepctr", "dien"): "DNN PReLU (the same Dice limitation)",
    ("deepctr", "autoint"): "history gets its own table: the model counts fields by embedding table",
    ("deepctr", "xdeepfm"): "history gets its own table: the model counts fields by embedding table",
    ("rechub", "din"): "attention MLP has BatchNorm (torch-rechub's MLP always does)",
    ("rechub", "dien"): "bilinear AUGRU attention and dot-product auxiliary net (not configurable)",
    ("rechub", "bst"): "position added, target pooling, FFN 2048 (torch's default, not configurable)",
    ("ctrjax", "bst"): "learned position concatenated (token 32 wide), target pooling, FFN 2048",
}


def deviations(models: list[str], libraries: list[str], batch_norm: bool) -> list[str]:
  """The footnotes for these models and libraries, one line each."""
  notes = [f"{LIBRARY_NAMES[lib]} {model}: {text}" for (lib, model), text in _DEVIATIONS.items()
           if model in models and lib in libraries]
  if batch_norm and "bst" in models:
    notes.append("ctrjax bst: no BatchNorm in its MLP (not configurable)")
  if not batch_norm and "rechub" in libraries:
    notes.append("torch-rechub: every MLP has BatchNorm (not configurable)")
  return notes


def ctrjax_model_config(model: str, batch_norm: bool, dnn_kernel_init: str = "xavier_normal") -> dict:
  """The fields of ctrjax's module ``model`` that the shared hyperparameters set (``config.model``
  is the model's defaults with these): the DNN's BatchNorm switch and kernel initialiser included,
  except in BST, whose DNN keeps ctrjax's defaults (no BatchNorm, Xavier kernels)."""
  h = HPARAMS[model]
  dnn = dict(hidden=h["hidden"], activation=h["activation"], dropout=0.0)
  if model == "bst":
    token = 2 * EMBED_DIM  # item embedding ⊕ learned position
    return {"embed_dim": EMBED_DIM, "dnn": {**dnn, "dropout": h["dropout"]}, "dropout": h["dropout"],
            "num_heads": h["num_heads"], "num_layers": h["num_layers"], "ffn_mult": h["ffn_hidden"] // token,
            "position": "learned", "pooling": "target"}
  dnn.update(batch_norm=batch_norm, batch_norm_momentum=TORCH_BATCH_NORM_MOMENTUM, kernel_init=dnn_kernel_init)
  base = dict(embed_dim=EMBED_DIM, dnn=dnn)
  if model == "din":
    return {**base, "attention_hidden": h["attention_hidden"],
            "attention_activation": h["attention_activation"], "attention_weighting": "raw"}
  if model == "dien":
    return {**base, "attention_hidden": h["attention_hidden"],
            "attention_activation": h["attention_activation"], "aux_loss_alpha": h["aux_loss_alpha"],
            "use_sum_pooling_features": False}
  base.update(pooling="mean")
  if model == "autoint":
    return {**base, "num_layers": h["num_layers"], "num_heads": h["num_heads"],
            "attention_dim": EMBED_DIM // h["num_heads"], "residual": True}
  if model == "dcn":
    return {**base, "num_cross_layers": h["num_cross_layers"]}
  if model == "deepfm":
    return base
  if model == "xdeepfm":
    return {**base, "cin_layers": h["cin_layers"], "split_half": True, "cin_activation": "identity",
            "first_order": True}
  raise ValueError(f"unknown model {model!r}; known: {', '.join(MODELS)}")


def parse_models(text: str) -> list[str]:
  """Comma-separated model names, validated against MODELS."""
  models = [m.strip() for m in text.split(",") if m.strip()]
  bad = [m for m in models if m not in MODELS]
  if bad or not models:
    raise ValueError(f"--models {text!r}: unknown {bad or 'empty list'}; known: {','.join(MODELS)}")
  return models


# ------------------------------------------------------------------------------------------------
# data layout


def right_pad(hist: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Left-padded sequences (ctrjax: pad first, oldest -> newest) -> right-padded (valid first, same
  order) and their lengths: DeepCTR-Torch and torch-rechub pack sequences by length."""
  valid = hist != 0
  length = valid.sum(axis=1)
  t = hist.shape[1]
  src = (np.arange(t)[None, :] + (t - length)[:, None]) % t
  out = np.take_along_axis(hist, src, axis=1)
  out[np.arange(t)[None, :] >= length[:, None]] = 0
  return out, length.astype(hist.dtype)


def sample_negatives(hist: np.ndarray, pool: np.ndarray, seed: int) -> np.ndarray:
  """One negative item per behaviour slot of ``hist`` (0 where ``hist`` is padding), drawn uniformly
  from ``pool`` (every training behaviour, so popularity-proportional, like ctrjax's draw from the
  batch's behaviours)."""
  neg = pool[np.random.default_rng(seed).integers(0, pool.size, hist.shape)]
  return np.where(hist != 0, neg, 0).astype(hist.dtype)


# ------------------------------------------------------------------------------------------------
# measurement


def auc(labels: np.ndarray, probs: np.ndarray) -> float:
  """ROC AUC, ties averaged (the same value as ctrjax.metrics.auc and sklearn)."""
  y = np.asarray(labels, np.float64) > 0.5
  n_pos, n_neg = int(y.sum()), int((~y).sum())
  if not n_pos or not n_neg:
    return float("nan")
  ranks = rankdata(np.asarray(probs, np.float64))
  return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def logloss(labels: np.ndarray, probs: np.ndarray) -> float:
  y = np.asarray(labels, np.float64)
  p = np.clip(np.asarray(probs, np.float64), EPS, 1 - EPS)
  return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


def rates(steps: int, warmup: int, batch: int, t_start: float, t_warm: float, t_end: float) -> dict:
  """Samples/s end to end (from ``t_start``: model build, compile and warm-up included) and in
  steady state (the steps after ``warmup``, timed from ``t_warm``)."""
  if not 0 < warmup < steps:
    raise ValueError(f"warm-up {warmup} steps must be in (0, {steps}) training steps; "
                     f"use more --rows or --epochs, or fewer --warmup")
  return {"end_to_end": steps * batch / (t_end - t_start),
          "steady": (steps - warmup) * batch / (t_end - t_warm)}
