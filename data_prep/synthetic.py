"""Synthetic CTR data with planted, measurable signal per feature group (scale + correctness benchmark).

Models that use a feature group should beat models that don't; ``stats.json["signal"]`` says by how
much each group *can* help, and ``oracle_test_auc`` / ``bayes_test_logloss`` bound what any model can
reach on the test split.

World (fixed by ``seed``; built once, O(num_items + num_users) memory):
  * clusters: ``num_item_clusters`` latent item clusters with weights pi ~ Dirichlet(2) and sizes
    n_c ~ 1 + Multinomial(num_items - K, pi).
  * items: within cluster c, item of within-cluster rank r has popularity ~ (r + 1) ** -zipf_a
    (a continuous truncated power law, sampled by closed-form inverse CDF); the global popularity is
    pi_c * that. Item ids 2..num_items+1 are assigned in decreasing global popularity (id 2 = most
    popular), so ids are "drawn Zipf-like by popularity".
  * users 0..num_users-1: a segment s(u) uniform in ``num_segments`` and ``PREF_CLUSTERS`` preferred
    clusters drawn from pi (with replacement; a repeat just strengthens that preference).
  * A[c, s] = +-1 (item cluster x user segment), B[c, h] ~ N(0, 1) (item cluster x hour).

Row (each independent, no timestamps):
  * user u uniform, hour h uniform in ``num_contexts``;
  * candidate cluster c: with prob ``P_CAND_PREF`` one of u's preferred clusters, else ~ pi; the
    candidate item is drawn from c by within-cluster popularity;
  * history length L uniform in [0, max_len] (so ~1/(max_len+1) of the rows have an empty history);
    each behaviour's cluster is one of u's preferred clusters with prob ``P_BEH_PREF``, else ~ pi,
    its item by within-cluster popularity; stored LEFT-padded with 0 (oldest -> newest, i.e. pad
    first; the order itself carries no signal);
  * logit = bias + signal_user * A[c, s(u)] + signal_context * B[c, h]
            + signal_behavior * beh + noise * N(0, 1),
    beh = (frac - m) / sd with frac = share of the L behaviours whose cluster == c, and (m, sd) the
    mean/std of frac over a fixed pilot sample (so beh is centred and ~unit-std like the other two
    components); beh = 0 for an empty history;
  * label ~ Bernoulli(sigmoid(logit)).

Every raw component has std ~1, so ``signal_*`` and ``noise`` are on the same scale. Note that
``user_id`` determines both the segment and the preferred clusters, so user_id x item_cluster can
partly recover the behaviour component too (as in real data).

Splits are contiguous (train, valid, test) by the ``split`` fractions. As in every ctrjax dataset, in
valid/test an id never seen in the train split is mapped to OOV (1) -- possible because the train rows
are generated first; the writer counts them in stats.json["oov"]. The meta field ``user`` keeps the raw
user id (for GAUC).

Determinism: rows are generated in fixed internal blocks of ``BLOCK_ROWS`` rows, block b from
``np.random.default_rng([seed, 2, b])``; write chunks (``chunk_rows``) only regroup those rows, so the
output depends on the arguments and the seed, never on ``chunk_rows``. Memory is bounded by
``chunk_rows`` (+ one block) plus, for the statistics, a few floats per TEST row.

stats.json (besides the writer's entries):
  prep: {"script", "version", "args" (all data-defining arguments), "chunk_rows"}
  signal: {group: {"signal", "std_of_logit_component" (std of signal_g * raw_g on test),
           "auc_of_component_alone" (exact AUC of the raw, unscaled component vs label on test: ~0.5
           when the group has no signal, < 0.5 for a negative signal)}} for user, context, behavior
  oracle_test_auc: AUC of the true noiseless logit on test
  bayes_test_logloss: logloss on test of the Bayes-optimal prediction E_eps[sigmoid(logit)] given the
    observable features (Gauss-Hermite over the noise) -- the floor for any model
  noisy_logit_test_logloss: logloss of sigmoid(noisy logit) (unattainable: it knows the noise)
  constant_test_logloss: logloss of predicting the test positive rate (the ceiling)

Usage:
  python -m data_prep.synthetic --out /tmp/syn --num_rows 1000000
  python -m data_prep.synthetic --num_rows 1000000     # prepare(): data/prepared/synthetic-<hash>
"""
from __future__ import annotations

import argparse
import hashlib
import inspect
import json
import pathlib
import shutil
import time

import numpy as np
from scipy.special import expit

REPO = pathlib.Path(__file__).resolve().parents[1]

from ctrjax import metrics
from ctrjax.data.schema import FIRST_ID, OOV_ID, PAD_ID, Field, Schema
from ctrjax.data.writer import DatasetWriter, is_complete
from data_prep.common import damage, one_at_a_time

VERSION = 1            # bump when the generated data changes for the same arguments (invalidates caches)
BLOCK_ROWS = 8192      # internal RNG block; changing it changes the data (bump VERSION)
PREF_CLUSTERS = 3      # preferred clusters per user
P_CAND_PREF = 0.5      # P(candidate cluster is one of the user's preferred clusters)
P_BEH_PREF = 0.8       # P(behaviour cluster is one of the user's preferred clusters)
PILOT_ROWS = 50_000    # rows of the pilot sample fixing the behaviour component's centring/scale
GROUPS = ("user", "context", "behavior")
_NOT_DATA = ("chunk_rows", "force")  # arguments that do not change the data


# ----------------------------------------------------------------------------------------------
# arguments


def _norm_args(kwargs: dict) -> dict:
  """All data-defining arguments of ``generate`` (defaults filled), type-normalised and validated."""
  sig = inspect.signature(generate)
  bound = sig.bind(None, **kwargs)  # TypeError on an unknown argument
  bound.apply_defaults()
  a = {k: v for k, v in bound.arguments.items() if k != "out_dir" and k not in _NOT_DATA}
  out = {}
  for k, v in a.items():
    d = sig.parameters[k].default
    if k == "split":
      v = [float(x) for x in v]
    elif isinstance(d, bool):
      v = bool(v)
    elif isinstance(d, int):
      if float(v) != int(v):
        raise ValueError(f"{k}={v!r} must be an integer")
      v = int(v)
    else:
      v = float(v)
    out[k] = v
  for k in ("num_rows", "num_items", "num_users", "num_item_clusters", "num_segments", "max_len",
            "num_contexts"):
    if out[k] < 1:
      raise ValueError(f"{k}={out[k]} must be >= 1")
  if out["num_item_clusters"] > out["num_items"]:
    raise ValueError(f"num_item_clusters={out['num_item_clusters']} > num_items={out['num_items']}")
  if out["zipf_a"] < 0 or out["noise"] < 0:
    raise ValueError("zipf_a and noise must be >= 0")
  s = out["split"]
  if len(s) != 3 or min(s) < 0 or abs(sum(s) - 1) > 1e-6 or s[0] <= 0:
    raise ValueError(f"split={s} must be 3 non-negative fractions summing to 1 with train > 0")
  return out


def args_hash(args: dict) -> str:
  """Short stable hash of the normalised arguments (and the generator version)."""
  blob = json.dumps({"version": VERSION, **args}, sort_keys=True)
  return hashlib.sha1(blob.encode()).hexdigest()[:10]


def split_sizes(num_rows: int, split) -> tuple[int, int, int]:
  n_train = int(round(num_rows * split[0]))
  n_valid = min(int(round(num_rows * split[1])), num_rows - n_train)
  return n_train, n_valid, num_rows - n_train - n_valid


def schema_for(a: dict) -> Schema:
  T = a["max_len"]
  items = a["num_items"] + FIRST_ID
  return Schema((
      Field("item_id", "item", "categorical", vocab_size=items, table="item_id",
            description="candidate item (ids by decreasing popularity)"),
      Field("item_cluster", "item", "categorical", vocab_size=a["num_item_clusters"] + FIRST_ID,
            table="item_cluster", description="latent cluster of the candidate item"),
      Field("hist_item_id", "behavior", "sequence", shape=(T,), max_len=T, vocab_size=items,
            table="item_id", description="user's behaviour items, left-padded, oldest -> newest"),
      Field("user_id", "user", "categorical", vocab_size=a["num_users"] + FIRST_ID),
      Field("user_segment", "user", "categorical", vocab_size=a["num_segments"] + FIRST_ID),
      Field("hour", "context", "categorical", vocab_size=a["num_contexts"] + FIRST_ID),
      Field("label", "label", "numeric", dtype="float32"),
      Field("user", "meta", "categorical", dtype="int32", description="raw user id (GAUC grouping)"),
  ))


# ----------------------------------------------------------------------------------------------
# the world and the row sampler


class _World:
  """Fixed random structure (clusters, item popularity, users, interaction matrices)."""

  def __init__(self, a: dict):
    self.a = a
    rng = np.random.default_rng([a["seed"], 0])
    K, N, U = a["num_item_clusters"], a["num_items"], a["num_users"]
    self.K, self.T = K, a["max_len"]
    pi = rng.dirichlet(np.full(K, 2.0))
    self.cluster_cdf = np.cumsum(pi)
    self.cluster_cdf /= self.cluster_cdf[-1]
    self.sizes = 1 + rng.multinomial(N - K, pi)
    self.seg_start = np.concatenate([[0], np.cumsum(self.sizes)[:-1]])
    self.zipf_a = a["zipf_a"]
    e = 1.0 - self.zipf_a
    self.log_case = abs(e) < 1e-6
    n1 = self.sizes + 1.0
    self.zc = np.log(n1) if self.log_case else n1 ** e - 1.0  # normaliser of the rank CDF per cluster
    # global popularity of (cluster, rank) -> ids in decreasing popularity
    ranks = np.arange(N, dtype=np.float64) - np.repeat(self.seg_start, self.sizes)
    cl = np.repeat(np.arange(K), self.sizes)
    pop = pi[cl] * (self._cdf(ranks + 2, cl) - self._cdf(ranks + 1, cl))
    del ranks
    order = np.argsort(-pop, kind="stable")
    del pop
    self.id_of = np.empty(N, np.int32)  # cluster-grouped position -> item id
    self.id_of[order] = np.arange(FIRST_ID, N + FIRST_ID, dtype=np.int32)
    del order
    self.segment = rng.integers(0, a["num_segments"], U)
    self.pref = np.searchsorted(self.cluster_cdf, rng.random((U, PREF_CLUSTERS)), side="right")
    self.pref = np.minimum(self.pref, K - 1)
    self.A = rng.choice(np.array([-1.0, 1.0]), size=(K, a["num_segments"]))
    self.B = rng.standard_normal((K, a["num_contexts"]))
    # pilot sample: centring/scale of the behaviour component
    pilot = self.sample(np.random.default_rng([a["seed"], 1]), PILOT_ROWS)
    frac = pilot["_frac"][pilot["_len"] > 0]
    self.beh_mean = float(frac.mean()) if frac.size else 0.0
    sd = float(frac.std()) if frac.size else 0.0
    self.beh_sd = sd if sd > 1e-9 else 1.0

  def _cdf(self, x, cl):
    """CDF of the continuous rank law of cluster ``cl``: P(rank < x - 1), in [0, 1]."""
    if self.log_case:
      return np.log(x) / self.zc[cl]
    return (x ** (1.0 - self.zipf_a) - 1.0) / self.zc[cl]

  def _clusters(self, u):
    return np.minimum(np.searchsorted(self.cluster_cdf, u, side="right"), self.K - 1)

  def _items(self, c, u):
    """Item ids of clusters ``c`` by within-cluster popularity (inverse CDF of uniforms ``u``)."""
    zc = self.zc[c]
    if self.log_case:
      x = np.exp(u * zc)
    else:
      x = (1.0 + u * zc) ** (1.0 / (1.0 - self.zipf_a))
    r = np.minimum(x.astype(np.int64) - 1, self.sizes[c] - 1)
    return self.id_of[self.seg_start[c] + np.maximum(r, 0)]

  def sample(self, rng: np.random.Generator, n: int) -> dict:
    """n rows: columns + internal '_' entries (true components). Fixed draw order (determinism)."""
    T, P = self.T, PREF_CLUSTERS
    user = rng.integers(0, self.a["num_users"], n)
    hour = rng.integers(0, self.a["num_contexts"], n)
    u1, u2, u3 = rng.random(n), rng.random(n), rng.random(n)
    pref = self.pref[user, np.minimum((u1 / P_CAND_PREF * P).astype(np.int64), P - 1)]
    c = np.where(u1 < P_CAND_PREF, pref, self._clusters(u2))
    item = self._items(c, u3)
    length = rng.integers(0, T + 1, n)
    mask = np.arange(T)[None, :] >= (T - length)[:, None]
    row = np.nonzero(mask)[0]                      # row of each behaviour, row-major = oldest first
    m = row.size
    b1, b2, b3 = rng.random(m), rng.random(m), rng.random(m)
    bpref = self.pref[user[row], np.minimum((b1 / P_BEH_PREF * P).astype(np.int64), P - 1)]
    bc = np.where(b1 < P_BEH_PREF, bpref, self._clusters(b2))
    hist = np.zeros((n, T), np.int32)
    hist[mask] = self._items(bc, b3)
    same = np.bincount(row, weights=(bc == c[row]), minlength=n)
    frac = same / np.maximum(length, 1)
    eps = rng.standard_normal(n)
    lab = rng.random(n)
    return {"item_id": item, "item_cluster": (c + FIRST_ID).astype(np.int32), "hist_item_id": hist,
            "user_id": (user + FIRST_ID).astype(np.int32),
            "user_segment": (self.segment[user] + FIRST_ID).astype(np.int32),
            "hour": (hour + FIRST_ID).astype(np.int32), "user": user.astype(np.int32),
            "_c": c, "_user": user, "_hour": hour, "_frac": frac, "_len": length, "_eps": eps,
            "_lab": lab}

  def block(self, b: int, n: int) -> dict:
    """Block b of the dataset (n rows): columns, labels and the true logit components."""
    a = self.a
    r = self.sample(np.random.default_rng([a["seed"], 2, b]), n)
    raw = {"user": self.A[r["_c"], self.segment[r["_user"]]],
           "context": self.B[r["_c"], r["_hour"]],
           "behavior": np.where(r["_len"] > 0, (r["_frac"] - self.beh_mean) / self.beh_sd, 0.0)}
    mu = a["bias"] + sum(a[f"signal_{g}"] * raw[g] for g in GROUPS)
    z = mu + a["noise"] * r["_eps"]
    y = r["_lab"] < expit(z)
    out = {k: v for k, v in r.items() if not k.startswith("_")}
    out["label"] = y.astype(np.float32)
    out.update({f"_raw_{g}": raw[g] for g in GROUPS})
    out["_mu"], out["_z"] = mu, z
    return out


def _chunks(world: _World, num_rows: int, chunk_rows: int):
  """Yields (start_row, columns) of exactly chunk_rows rows (the last may be shorter)."""
  pending, have, start = [], 0, 0
  nblocks = -(-num_rows // BLOCK_ROWS)
  for b in range(nblocks):
    pending.append(world.block(b, min(BLOCK_ROWS, num_rows - b * BLOCK_ROWS)))
    have += len(pending[-1]["label"])
    while have >= chunk_rows or (b == nblocks - 1 and have):
      cat = pending[0] if len(pending) == 1 else {k: np.concatenate([p[k] for p in pending])
                                                  for k in pending[0]}
      k = min(chunk_rows, have)
      yield start, {n: v[:k] for n, v in cat.items()}
      start += k
      have -= k
      pending = [{n: v[k:] for n, v in cat.items()}] if have else []


# ----------------------------------------------------------------------------------------------
# metrics (ctrjax.metrics; None instead of NaN so stats.json stays strict JSON)


def auc(score: np.ndarray, label: np.ndarray) -> float | None:
  value = metrics.auc(label, score)
  return None if np.isnan(value) else value


def logloss(p: np.ndarray, y: np.ndarray) -> float:
  return metrics.logloss(y, p)


def _bayes_prob(mu: np.ndarray, noise: float) -> np.ndarray:
  """E_eps[sigmoid(mu + noise * eps)], eps ~ N(0, 1), by 48-point Gauss-Hermite quadrature."""
  if noise == 0:
    return expit(mu)
  x, w = np.polynomial.hermite_e.hermegauss(48)
  w = w / w.sum()
  out = np.zeros_like(mu)
  for xi, wi in zip(x, w):
    out += wi * expit(mu + noise * xi)
  return out


# ----------------------------------------------------------------------------------------------
# public API


def generate(out_dir, *, num_rows=100_000, num_items=10_000, num_users=2_000, num_item_clusters=20,
             num_segments=10, max_len=30, num_contexts=24, signal_user=1.0, signal_context=1.0,
             signal_behavior=1.0, noise=1.0, bias=-1.0, zipf_a=1.1, split=(0.8, 0.1, 0.1), seed=0,
             chunk_rows=200_000, force=False) -> pathlib.Path:
  """Writes the synthetic dataset to ``out_dir`` (see the module docstring); returns its path.

  An existing complete ``out_dir`` generated with the same arguments is returned untouched; one with
  different arguments raises FileExistsError unless ``force`` (which always regenerates).
  """
  kw = {k: v for k, v in locals().items() if k not in ("out_dir", *_NOT_DATA)}
  a = _norm_args(kw)
  if chunk_rows < 1:
    raise ValueError(f"chunk_rows={chunk_rows} must be >= 1")
  out_dir = pathlib.Path(out_dir)
  if is_complete(out_dir) and not force:
    if _cached_ok(out_dir, a):
      return out_dir
    raise FileExistsError(f"{out_dir} holds a dataset generated with other arguments "
                          f"(pass force=True / --force to overwrite)")
  schema = schema_for(a)
  world = _World(a)
  n_train, n_valid, n_test = split_sizes(a["num_rows"], a["split"])
  bounds = {"train": (0, n_train), "valid": (n_train, n_train + n_valid),
            "test": (n_train + n_valid, a["num_rows"])}
  id_fields = [f for f in schema.fields if f.has_ids]
  seen = {t: np.zeros(v, bool) for t, v in schema.tables.items()}
  for s in seen.values():
    s[PAD_ID] = True
  keep = ("_mu", "_z", *(f"_raw_{g}" for g in GROUPS), "label")
  test = {k: [] for k in keep}
  writer = DatasetWriter(out_dir, schema)
  for start, cols in _chunks(world, a["num_rows"], int(chunk_rows)):
    end = start + len(cols["label"])
    for split, (lo, hi) in bounds.items():
      lo, hi = max(lo, start), min(hi, end)
      if lo >= hi:
        continue
      part = {k: v[lo - start:hi - start] for k, v in cols.items()}
      if split == "train":
        for f in id_fields:
          seen[f.table][part[f.name].ravel()] = True
      else:  # ids never seen in train -> OOV (train rows all come first)
        for f in id_fields:
          part[f.name] = np.where(seen[f.table][part[f.name]], part[f.name], OOV_ID).astype(np.int32)
      if split == "test":
        for k in keep:
          test[k].append(part[k].astype(np.float32 if k == "label" else np.float64))
      writer.append(split, {f.name: part[f.name] for f in schema.fields})
  test = {k: (np.concatenate(v) if v else np.zeros(0)) for k, v in test.items()}
  y = test["label"].astype(np.float64)
  stats = {
      "prep": {"script": "data_prep/synthetic.py", "version": VERSION, "args": a,
               "chunk_rows": int(chunk_rows)},
      "signal": {g: {"signal": a[f"signal_{g}"],
                     "std_of_logit_component": (float(np.std(a[f"signal_{g}"] * test[f"_raw_{g}"]))
                                                if y.size else None),
                     "auc_of_component_alone": auc(test[f"_raw_{g}"], y)} for g in GROUPS},
      "noise_std": a["noise"],
      "oracle_test_auc": auc(test["_mu"], y),
      "bayes_test_logloss": logloss(_bayes_prob(test["_mu"], a["noise"]), y) if y.size else None,
      "noisy_logit_test_logloss": logloss(expit(test["_z"]), y) if y.size else None,
      "constant_test_logloss": logloss(np.full_like(y, y.mean()), y) if y.size else None,
      "synthetic": {"block_rows": BLOCK_ROWS, "pref_clusters": PREF_CLUSTERS,
                    "p_cand_pref": P_CAND_PREF, "p_beh_pref": P_BEH_PREF,
                    "behavior_frac_mean": world.beh_mean, "behavior_frac_std": world.beh_sd,
                    "cluster_sizes_min_max": [int(world.sizes.min()), int(world.sizes.max())]},
  }
  return writer.finalize(stats=stats)


def _cached_ok(path: pathlib.Path, args: dict) -> bool:
  try:
    prep = json.loads((path / "stats.json").read_text()).get("prep", {})
  except (OSError, json.JSONDecodeError):
    return False
  return prep.get("version") == VERSION and prep.get("args") == args


@one_at_a_time
def prepare(out_root="data/prepared", force=False, **kwargs) -> pathlib.Path:
  """generate() into ``<out_root>/synthetic-<hash of the arguments>``, reusing a complete cached copy.

  A relative ``out_root`` is resolved against the repository root. ``chunk_rows`` does not change the
  data and so is not part of the hash.
  """
  a = _norm_args({k: v for k, v in kwargs.items() if k not in _NOT_DATA})
  root = pathlib.Path(out_root)
  if not root.is_absolute():
    root = REPO / root
  out = root / f"synthetic-{args_hash(a)}"
  if not force and is_complete(out) and _cached_ok(out, a) and not damage(out):
    return out
  if out.exists() and not is_complete(out):
    shutil.rmtree(out)
  return generate(out, force=True, **kwargs)


def main(argv=None) -> None:
  sig = inspect.signature(generate)
  p = argparse.ArgumentParser(prog="python -m data_prep.synthetic",
                              description=__doc__.split("\n\n")[0],
                              formatter_class=argparse.ArgumentDefaultsHelpFormatter)
  p.add_argument("--out", default=None,
                 help="output directory; default: prepare() into --out_root/synthetic-<hash> (cached)")
  p.add_argument("--out_root", default="data/prepared", help="root for the cached prepare() directory")
  for name, prm in sig.parameters.items():
    if name in ("out_dir", "force"):
      continue
    d = prm.default
    if name == "split":
      p.add_argument("--split", type=float, nargs=3, default=list(d), metavar=("TRAIN", "VALID", "TEST"))
    else:
      p.add_argument(f"--{name}", type=type(d), default=d)
  p.add_argument("--force", action="store_true", help="regenerate even if a complete copy exists")
  ns = vars(p.parse_args(argv))
  out, out_root, force = ns.pop("out"), ns.pop("out_root"), ns.pop("force")
  t0 = time.perf_counter()
  path = (generate(out, force=force, **ns) if out else prepare(out_root, force=force, **ns))
  secs = time.perf_counter() - t0
  st = json.loads((path / "stats.json").read_text())
  print(f"path: {path}")
  print(f"seconds: {secs:.1f}")
  print("rows: " + ", ".join(f"{s}={n}" for s, n in st["rows"].items()))
  print("positive rate: " + ", ".join(f"{s}={r:.4f}" if r is not None else f"{s}=-"
                                      for s, r in st["positive_rate"].items()))
  for g, v in st["signal"].items():
    a_ = v["auc_of_component_alone"]
    print(f"signal {g:8s}: signal={v['signal']:g} std_of_logit_component="
          f"{v['std_of_logit_component']} auc_of_component_alone={a_}")
  print(f"oracle_test_auc: {st['oracle_test_auc']}")
  print(f"bayes_test_logloss: {st['bayes_test_logloss']}  (constant: {st['constant_test_logloss']})")


if __name__ == "__main__":
  main()
