"""What the config files share: their one argument parser, the grid definition with the
protocols and helpers of the grid configs (the runner and report are experiments/runner.py and
experiments/report.py), and the search space of ``./run.sh tune`` (experiments/tune.py).

A config's argument is the text after ``:`` in ``./run.sh configs/FILE.py:ARG``, comma-separated:
``parse_arg('quick,dataset=ml-100k', quick=False, dataset=('ml-latest-small', 'ml-100k'))``.
"""
from __future__ import annotations

import dataclasses
import difflib
import inspect
import os
import pathlib
from typing import Any

import ml_collections

import data_prep

FULL_SEEDS = (0, 1, 2, 3, 4)
PROTOCOLS = {"quick": ((0, 1), 1),       # a smoke run: 2 seeds, 1 epoch
             "short": ((0, 1, 2), 3)}    # a grid too heavy for a small CPU: 3 seeds, at most 3 epochs
# The grid protocol 'tuned' is no epoch cap: each variant is tuned (its own study of TUNED_TRIALS
# trials, selected on valid), then its best setting trained with FULL_SEEDS, beside the grid's
# ordinary runs (experiments/tune.py).
TUNED = "tuned"
TUNED_TRIALS = 8


@dataclasses.dataclass(frozen=True)
class Grid:
  name: str                                        # results/<name>/...
  variants: dict[str, dict[str, Any]]              # variant -> {"dotted.config.key": value}
  seeds: tuple[int, ...]
  reference: str                                   # Δ, p-value and RelaImpr are against this variant
  sections: dict[str, tuple[str, ...]] = dataclasses.field(default_factory=dict)  # table parts
  curves: tuple[str, ...] = ()                     # variants whose validation curves are plotted
  attention: tuple[str, str, tuple[str, ...]] | None = None  # (variant, attention key, token labels)
  relaimpr_metric: str = "auc"                     # RelaImpr on test AUC, or on GAUC (the DIN paper's)
  factorial: bool = False                          # variants are '<a>-<b>-<c>' levels: factorial.png
  tuned: bool = False                              # protocol 'tuned': each variant tuned, then seeds

  def __post_init__(self):
    if self.reference not in self.variants:
      raise ValueError(f"grid {self.name!r}: reference {self.reference!r} is not a variant")
    named = [v for vs in self.sections.values() for v in vs] + list(self.curves)
    named += [self.attention[0]] if self.attention else []
    unknown = sorted(set(named) - set(self.variants))
    if unknown:
      raise ValueError(f"grid {self.name!r}: sections/curves/attention name unknown variants {unknown}")
    if self.relaimpr_metric not in ("auc", "gauc"):
      raise ValueError(f"grid {self.name!r}: relaimpr_metric={self.relaimpr_metric!r}; 'auc' or 'gauc'")

  def select(self, names: list[str]) -> tuple[str, ...]:
    """The variants ``names`` stand for (each a variant or a section's name, e.g. 'DIN Table 3'),
    with the reference, in the grid's order; an unknown name is a ValueError with a did-you-mean."""
    chosen = {self.reference}
    for name in names:
      if name in self.sections:
        chosen.update(self.sections[name])
      elif name in self.variants:
        chosen.add(name)
      else:
        close = difflib.get_close_matches(name, [*self.variants, *self.sections], n=2)
        raise ValueError(f"--variants: grid {self.name!r} has no variant or section {name!r}"
                         + (f"; did you mean {' or '.join(map(repr, close))}?" if close else
                            f"; its variants: {', '.join(self.variants)}; sections: {', '.join(map(repr, self.sections))}"))
    return tuple(v for v in self.variants if v in chosen)

  def comparing_sections(self, present) -> dict[str, tuple[str, ...]]:
    """The sections (the whole grid as one unnamed section when it has none), each cut to the
    variants in ``present``, that hold a variant besides the reference: a section of the reference
    alone compares nothing, it only repeats the reference's rows (reports leave it out)."""
    sections = self.sections or {"": tuple(self.variants)}
    cut = {name: tuple(v for v in vs if v in present) for name, vs in sections.items()}
    return {name: vs for name, vs in cut.items() if set(vs) - {self.reference}}

  def restricted(self, variants: tuple[str, ...]) -> Grid:
    """This grid with the variants ``variants`` only (``select``'s), its sections, curves and
    attention figure cut to them."""
    sections = {name: kept for name, vs in self.sections.items() if (kept := tuple(v for v in vs if v in variants))}
    return dataclasses.replace(self, variants={v: o for v, o in self.variants.items() if v in variants},
                               sections=sections, curves=tuple(v for v in self.curves if v in variants),
                               attention=self.attention if self.attention and self.attention[0] in variants else None)


def parse_arg(arg: str | None, **defaults) -> ml_collections.FrozenConfigDict:
  """A config's comma-separated argument -> its values: ``defaults`` updated by the tokens.

  A default ``False`` is a flag, set by its bare name ('quick'); a tuple of strings is a choice, set
  by 'name=value' with a value from the tuple and defaulting to its first. Any other token, or one
  name given twice, is a ValueError naming the config file (``_config_file``)."""
  out = {k: v[0] if isinstance(v, tuple) else v for k, v in defaults.items()}
  given = set()
  for token in filter(None, (arg or "").split(",")):
    key, sep, value = token.partition("=")
    kind = defaults.get(key)
    valid = isinstance(kind, tuple) and value in kind if sep else kind is False
    if not valid or key in given:
      usage = [repr(k) for k, v in defaults.items() if v is False]
      usage += [f"'{k}=' one of {v}" for k, v in defaults.items() if isinstance(v, tuple)]
      raise ValueError(f"{_config_file()}: bad argument {token!r}; use {', '.join(usage) or 'none'}, "
                       "each at most once")
    given.add(key)
    out[key] = value if sep else True
  return ml_collections.FrozenConfigDict(out)


def _config_file() -> str:
  """The config file the running ``get_config``/``get_grid`` call started in: the outermost one on
  the stack from this folder, so configs/dmr.py's argument, which configs/base.py parses, is named
  dmr.py; outside this folder (a test's config), the caller of this module."""
  here = pathlib.Path(__file__).resolve()
  files = [pathlib.Path(frame.filename).resolve() for frame in inspect.stack(context=0)]
  configs = [f for f in files if f.parent == here.parent and f != here]
  path = configs[-1] if configs else next(f for f in files if f != here)
  return os.path.relpath(path, here.parents[1]) if here.parents[1] in path.parents else str(path)


def parse_grid_arg(arg: str | None, datasets: tuple[str, ...]) -> ml_collections.FrozenConfigDict:
  """A grid config's argument: at most one of PROTOCOLS ('quick', 'short') or 'tuned', and/or
  'dataset=NAME' with NAME from ``datasets`` (default: the first) -> {protocol (a name or None),
  dataset}."""
  a = parse_arg(arg, **{p: False for p in (*PROTOCOLS, TUNED)}, dataset=datasets)
  protocols = [p for p in (*PROTOCOLS, TUNED) if a[p]]
  if len(protocols) > 1:
    raise ValueError(f"{_config_file()}: {protocols[0]!r} and {protocols[1]!r} are two protocols; pick one")
  return ml_collections.FrozenConfigDict({"protocol": protocols[0] if protocols else None,
                                          "dataset": a["dataset"]})


def apply_grid_arg(config: ml_collections.ConfigDict,
                   a: ml_collections.FrozenConfigDict) -> ml_collections.ConfigDict:
  """A grid's run config from its parsed argument: the dataset, the protocol's epoch cap (early
  stopping still picks the best epoch), one progress line per run instead of a bar."""
  config.dataset = data_prep.switch_dataset(config.dataset, a["dataset"])
  if a["protocol"] in PROTOCOLS:
    config.num_epochs = PROTOCOLS[a["protocol"]][1]
  config.progress_bar = False
  return config


def grid_identity(name: str, a: ml_collections.FrozenConfigDict) -> dict:
  """Grid name and seeds from the parsed argument: a protocol's seeds under ``<name>_<protocol>``
  ('tuned': FULL_SEEDS, ``tuned`` set), else FULL_SEEDS under ``<name>``."""
  if a["protocol"] == TUNED:
    return {"name": f"{name}_{TUNED}", "seeds": FULL_SEEDS, "tuned": True}
  if a["protocol"]:
    return {"name": f"{name}_{a['protocol']}", "seeds": PROTOCOLS[a["protocol"]][0]}
  return {"name": name, "seeds": FULL_SEEDS}


def untuned_arg(arg: str | None) -> str | None:
  """A grid argument without 'tuned': the grid whose ordinary runs the tuned rows stand beside."""
  return ",".join(t for t in (arg or "").split(",") if t and t != TUNED) or None


# --- The search space of ./run.sh tune (experiments/tune.py) --------------------------------------
# A config file may define ``get_search_space(arg) -> dict[dotted config key, LogUniform | Uniform |
# Choice | Fixed]`` next to ``get_config``; without one, DEFAULT_SEARCH_SPACE applies.


@dataclasses.dataclass(frozen=True)
class LogUniform:
  """A float drawn uniformly in log space from [lo, hi] (learning rates, L2 weights)."""
  lo: float
  hi: float

  def __post_init__(self):
    if not 0 < self.lo < self.hi:
      raise ValueError(f"LogUniform({self.lo}, {self.hi}): needs 0 < lo < hi")


@dataclasses.dataclass(frozen=True)
class Uniform:
  """A float drawn uniformly from [lo, hi] (dropout rates)."""
  lo: float
  hi: float

  def __post_init__(self):
    if not self.lo < self.hi:
      raise ValueError(f"Uniform({self.lo}, {self.hi}): needs lo < hi")


@dataclasses.dataclass(frozen=True)
class Choice:
  """One of ``values`` (e.g. MLP widths as tuples); a trial names it by ``label``."""
  values: tuple

  def __post_init__(self):
    if len(self.values) < 2 or len(set(map(self.label, self.values))) != len(self.values):
      raise ValueError(f"Choice{self.values}: needs two or more values with distinct labels")

  @staticmethod
  def label(value) -> str:
    """A value's name in the study and trials.csv: '200-80' for (200, 80), str() otherwise."""
    return "-".join(map(str, value)) if isinstance(value, (tuple, list)) else str(value)


@dataclasses.dataclass(frozen=True)
class Fixed:
  """A value every trial sets (not searched), e.g. the regulariser mode its λ belongs to."""
  value: Any


SearchSpace = dict[str, LogUniform | Uniform | Choice | Fixed]

# Configs that declare no space: Adam's learning rate, DIN's mini-batch-aware embedding L2 (eq. 7's
# λ, ctrjax/train/regularizers.py), the prediction MLP's dropout and widths (MIAN's 32-8 to 400-200).
DEFAULT_SEARCH_SPACE: SearchSpace = {
    "optimizer.learning_rate": LogUniform(1e-4, 1e-2),
    "regularizer.mode": Fixed("mba"),
    "regularizer.weight": LogUniform(1e-5, 1e-1),
    "model.dnn.dropout": Uniform(0.0, 0.5),
    "model.dnn.hidden": Choice(((32, 8), (80, 40), (200, 80), (400, 200))),
}


def search_space(module, arg: str | None) -> SearchSpace:
  """A config module's ``get_search_space(arg)``, or DEFAULT_SEARCH_SPACE if it declares none."""
  return module.get_search_space(arg) if hasattr(module, "get_search_space") else dict(DEFAULT_SEARCH_SPACE)


def missing_field(config: ml_collections.ConfigDict, key: str) -> tuple[str, str, str] | None:
  """Where dotted ``key`` leaves ``config``: (the fields walked, as ``.a.b``; the first part it lacks;
  a did-you-mean or the fields there), or None when ``config`` has it. For one-line key errors."""
  node, walked = config, ""
  for part in key.split("."):
    if not hasattr(node, "keys") or part not in node:
      known = sorted(node.keys()) if hasattr(node, "keys") else []
      close = difflib.get_close_matches(part, known, n=3)
      return walked, part, (f"did you mean {' or '.join(close)}?" if close else f"fields there: {', '.join(known)}")
    node, walked = node[part], f"{walked}.{part}"
  return None
