"""Shared figure plumbing of the experiment scripts: a headless matplotlib and one way to save."""
from __future__ import annotations

import pathlib

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402,F401  (re-exported)


def save_figure(fig, path: str | pathlib.Path) -> pathlib.Path:
  """Writes ``fig`` to ``path`` (parent folders created, 120 dpi) and closes it."""
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  fig.savefig(path, dpi=120)
  plt.close(fig)
  return path
