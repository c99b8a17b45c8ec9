"""One training run of a DeepCTR-Torch or torch-rechub model; prints one ``RESULT {json}`` line.

  cache/torch-venv/bin/python -m benchmarks.compare_torch.torch_runner --library deepctr --model din \
      --data cache/compare_torch/<dataset>.npz [--epochs 1] [--warmup 20] [--seed 0] [--batch_norm]
      [--threads N] [--device cpu|cuda] [--deepfm_first_order linear|per_feature]

Runs in the torch venv (benchmarks/compare_torch/run.sh builds it). The model is the library's own
class; the loop around it is the one both libraries' trainers run (forward, BCE plus the model's
auxiliary loss, backward, Adam step), fed by indexing tensors built once (on the device that
trains), so the library's DataLoader and progress bar cost nothing here: the reference gets its
fastest input path.
"""
import argparse
import json
import resource
import time

import numpy as np
import requests
import torch
import torch.nn.functional as F

from benchmarks.compare_torch import spec


def _offline(*args, **kwargs):
  raise ConnectionError("compare_torch makes no network calls")


requests.get = _offline  # deepctr_torch asks PyPI for its latest version at import, in a thread


class _DeepCTR:
  """DeepCTR-Torch: feature columns, one float tensor X [N, columns] in the model's column order."""

  def __init__(self, model: str, data: dict, seed: int, batch_norm: bool, device: str):
    from deepctr_torch import models
    from deepctr_torch.inputs import SparseFeat, VarLenSparseFeat
    d, h, t = spec.EMBED_DIM, spec.HPARAMS[model], data["train"][spec.HISTORY].shape[1]
    sparse = [SparseFeat(n, vocabulary_size=data["vocab"][n], embedding_dim=d) for n in spec.SPARSE]

    def seq(name, table):
      return VarLenSparseFeat(SparseFeat(name, vocabulary_size=data["vocab"]["item_id"], embedding_dim=d,
                                         embedding_name=table), maxlen=t, combiner="mean",
                              length_name="hist_len")
    own_table = model in ("autoint", "xdeepfm")  # they count fields by embedding table
    cols = sparse + [seq(spec.HISTORY, spec.HISTORY if own_table else "item_id")]
    common = dict(dnn_hidden_units=h["hidden"], l2_reg_embedding=0.0, seed=seed, device=device)
    if model == "din":
      self.net = models.DIN(cols, ["item_id"], dnn_use_bn=batch_norm, dnn_activation="prelu",
                            att_hidden_size=h["attention_hidden"], att_activation="Dice",
                            att_weight_normalization=h["attention_softmax"], **common)
    elif model == "dien":
      self.net = models.DIEN(cols + [seq(spec.NEG_HISTORY, "item_id")], ["item_id"], gru_type="AUGRU",
                             use_negsampling=True, alpha=h["aux_loss_alpha"], use_bn=batch_norm,
                             dnn_activation="prelu", att_hidden_units=h["attention_hidden"],
                             att_activation=h["attention_activation"], att_weight_normalization=True,
                             **common)
    elif model == "autoint":
      self.net = models.AutoInt([], cols, att_layer_num=h["num_layers"], att_head_num=h["num_heads"],
                                att_res=True, dnn_activation=h["activation"], dnn_use_bn=batch_norm,
                                **common)
    elif model == "dcn":
      self.net = models.DCN([], cols, cross_num=h["num_cross_layers"], cross_parameterization="vector",
                            l2_reg_linear=0.0, l2_reg_cross=0.0, dnn_activation=h["activation"],
                            dnn_use_bn=batch_norm, **common)
    elif model == "deepfm":
      self.net = models.DeepFM(cols, cols, l2_reg_linear=0.0, dnn_activation=h["activation"],
                               dnn_use_bn=batch_norm, **common)
    elif model == "xdeepfm":
      self.net = models.xDeepFM(cols, cols, cin_layer_size=h["cin_layers"], cin_split_half=True,
                                cin_activation="linear", l2_reg_linear=0.0, l2_reg_cin=0.0,
                                dnn_activation=h["activation"], dnn_use_bn=batch_norm, **common)
    else:
      raise ValueError(f"DeepCTR-Torch has no {model!r}")
    self.x = {s: self._matrix(data[s]).to(device) for s in ("train", "test")}

  def _matrix(self, cols: dict) -> torch.Tensor:
    parts = [np.asarray(cols[n], np.float32).reshape(len(cols["label"]), -1)
             for n in self.net.feature_index]
    return torch.from_numpy(np.concatenate(parts, axis=1))

  def batch(self, split: str, idx: torch.Tensor):
    return self.x[split][idx]

  def forward(self, x) -> tuple[torch.Tensor, torch.Tensor]:
    prob = self.net(x).squeeze(-1)
    return prob, self.net.aux_loss.sum()  # DIEN sets aux_loss (alpha included) in forward


class _RecHub:
  """torch-rechub: feature objects, a dict of int64 tensors per batch."""

  def __init__(self, model: str, data: dict, seed: int, batch_norm: bool, device: str,
               deepfm_first_order: str = "linear"):
    del batch_norm  # torch-rechub's MLP always has BatchNorm
    from torch_rechub.basic.features import SequenceFeature, SparseFeature
    from torch_rechub.models import ranking
    torch.manual_seed(seed)
    d, h, v = spec.EMBED_DIM, spec.HPARAMS[model], data["vocab"]
    item = SparseFeature("item_id", v["item_id"], embed_dim=d, padding_idx=0)
    other = [SparseFeature(n, v[n], embed_dim=d) for n in spec.SPARSE if n != "item_id"]

    def seq(name, pooling):
      return SequenceFeature(name, v["item_id"], embed_dim=d, pooling=pooling, shared_with="item_id",
                             padding_idx=0)
    mlp = dict(dims=list(h["hidden"]))
    if model == "din":
      self.net = ranking.DIN(other, [seq(spec.HISTORY, "concat")], [item], mlp_params=mlp,
                             attention_mlp_params=dict(dims=list(h["attention_hidden"]),
                                                       activation=h["attention_activation"],
                                                       use_softmax=h["attention_softmax"]))
    elif model == "dien":
      self.net = ranking.DIEN(other, [seq(spec.HISTORY, "concat")], [seq(spec.NEG_HISTORY, "concat")],
                              [item], mlp_params=mlp, alpha=h["aux_loss_alpha"])
    elif model == "bst":
      self.net = ranking.BST(other, [seq(spec.HISTORY, "concat")], [item],
                             mlp_params=dict(mlp, activation="leakyrelu", dropout=h["dropout"]),
                             nhead=h["num_heads"], dropout=h["dropout"], num_layers=h["num_layers"],
                             max_seq_len=data["train"][spec.HISTORY].shape[1] + 1)
    else:
      fields = [item, *other, seq(spec.HISTORY, "mean")]
      mlp["activation"] = h["activation"]
      if model == "autoint":
        self.net = ranking.AutoInt(fields, [], num_layers=h["num_layers"], num_heads=h["num_heads"],
                                   mlp_params=mlp)
      elif model == "dcn":
        self.net = ranking.DCN(fields, n_cross_layers=h["num_cross_layers"], mlp_params=mlp)
      elif model == "deepfm":
        self.net = ranking.DeepFM(fields, fields, mlp_params=mlp)
        if deepfm_first_order == "per_feature":
          ones = [SparseFeature("item_id", v["item_id"], embed_dim=1, padding_idx=0),
                  *[SparseFeature(n, v[n], embed_dim=1) for n in spec.SPARSE if n != "item_id"],
                  SequenceFeature(spec.HISTORY, v["item_id"], embed_dim=1, pooling="mean",
                                  shared_with="item_id", padding_idx=0)]
          self.net = _DeepFMPerFeatureFirstOrder(self.net, ones)
      else:
        raise ValueError(f"torch-rechub has no {model!r}")
    self.net.to(device)
    self.x = {s: {n: torch.from_numpy(np.asarray(c, np.int64)).to(device) for n, c in data[s].items()
                  if n != "label"} for s in ("train", "test")}

  def batch(self, split: str, idx: torch.Tensor):
    return {n: c[idx] for n, c in self.x[split].items()}

  def forward(self, x) -> tuple[torch.Tensor, torch.Tensor]:
    out = self.net(x)
    return out if isinstance(out, tuple) else (out, torch.zeros(()))  # DIEN returns (prob, aux)


class _DeepFMPerFeatureFirstOrder(torch.nn.Module):
  """torch-rechub's DeepFM with the paper's first-order term, a scalar weight per id (1-wide
  embeddings of the same fields, the history mean-pooled) plus a bias, in place of its Linear over
  the concatenated field embeddings; the FM and DNN parts are rechub's own modules."""

  def __init__(self, deepfm: torch.nn.Module, features_1d: list):
    super().__init__()
    from torch_rechub.basic.layers import EmbeddingLayer
    deepfm.linear = None
    self.deepfm, self.features_1d = deepfm, features_1d
    self.first_order = EmbeddingLayer(features_1d)
    self.bias = torch.nn.Parameter(torch.zeros(1))

  def forward(self, x):
    m = self.deepfm
    y_linear = self.first_order(x, self.features_1d, squeeze_dim=True).sum(1, keepdim=True) + self.bias
    y_fm = m.fm(m.embedding(x, m.fm_features, squeeze_dim=False))
    y_deep = m.mlp(m.embedding(x, m.deep_features, squeeze_dim=True))
    return torch.sigmoid((y_linear + y_fm + y_deep).squeeze(1))


def load(path: str) -> dict:
  """The exported arrays, histories right-padded (both libraries pack sequences by length)."""
  z = np.load(path)
  data = {"vocab": {n[len("vocab_"):]: int(z[n]) for n in z.files if n.startswith("vocab_")}}
  for split in ("train", "test"):
    cols = {n[len(split) + 1:]: z[n] for n in z.files if n.startswith(split + "_")}
    cols[spec.HISTORY], cols["hist_len"] = spec.right_pad(cols[spec.HISTORY])
    cols[spec.NEG_HISTORY], _ = spec.right_pad(cols[spec.NEG_HISTORY])
    data[split] = cols
  return data


def main():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--library", choices=("deepctr", "rechub"), required=True)
  ap.add_argument("--model", choices=spec.MODELS, required=True)
  ap.add_argument("--data", required=True, help="npz written by benchmarks.compare_torch.run")
  ap.add_argument("--epochs", type=int, default=1)
  ap.add_argument("--warmup", type=int, default=20, help="steps excluded from the steady state")
  ap.add_argument("--seed", type=int, default=0)
  ap.add_argument("--batch_norm", action="store_true", help="BatchNorm in the DNNs (DeepCTR-Torch)")
  ap.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
  ap.add_argument("--device", default="cpu", help="torch device that trains: cpu or cuda")
  ap.add_argument("--deepfm_first_order", choices=("linear", "per_feature"), default="linear",
                  help="torch-rechub's DeepFM: its Linear over the field embeddings, or the paper's "
                  "scalar weight per id")
  a = ap.parse_args()
  if a.deepfm_first_order != "linear" and (a.library, a.model) != ("rechub", "deepfm"):
    ap.error("--deepfm_first_order is for --library rechub --model deepfm")
  sync = torch.cuda.synchronize if a.device.startswith("cuda") else lambda: None
  if a.threads:
    torch.set_num_threads(a.threads)
  data = load(a.data)
  labels = {s: torch.from_numpy(np.asarray(data[s]["label"], np.float32)).to(a.device)
            for s in ("train", "test")}
  n, b = len(labels["train"]), spec.BATCH_SIZE
  steps = a.epochs * (n // b)

  t_start = time.perf_counter()
  if a.library == "deepctr":
    lib = _DeepCTR(a.model, data, a.seed, a.batch_norm, a.device)
  else:
    lib = _RecHub(a.model, data, a.seed, a.batch_norm, a.device, a.deepfm_first_order)
  opt = torch.optim.Adam(lib.net.parameters(), lr=spec.LEARNING_RATE)
  gen = torch.Generator().manual_seed(a.seed)
  lib.net.train()
  step, t_warm = 0, None
  for _ in range(a.epochs):
    perm = torch.randperm(n, generator=gen).to(a.device)
    for i in range(n // b):
      idx = perm[i * b:(i + 1) * b]
      prob, aux = lib.forward(lib.batch("train", idx))
      loss = F.binary_cross_entropy(prob, labels["train"][idx]) + aux
      opt.zero_grad()
      loss.backward()
      opt.step()
      step += 1
      if step == a.warmup:
        sync()
        t_warm = time.perf_counter()
  sync()
  t_end = time.perf_counter()

  lib.net.eval()
  m = len(labels["test"])
  with torch.no_grad():
    probs = np.concatenate([lib.forward(lib.batch("test", torch.arange(i, min(i + b, m), device=a.device)))[0]
                            .cpu().numpy() for i in range(0, m, b)])
  y = labels["test"].cpu().numpy()
  result = {"library": a.library, "model": a.model, "seed": a.seed, "steps": steps, "warmup": a.warmup,
            "samples_per_s": spec.rates(steps, a.warmup, b, t_start, t_warm, t_end),
            "train_seconds": t_end - t_start, "test_auc": spec.auc(y, probs),
            "test_logloss": spec.logloss(y, probs),
            "parameters": int(sum(p.numel() for p in lib.net.parameters())),
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "torch": torch.__version__, "threads": torch.get_num_threads(), "device": a.device}
  print("RESULT " + json.dumps(result), flush=True)


if __name__ == "__main__":
  main()
