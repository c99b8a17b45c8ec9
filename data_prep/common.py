"""What every data_prep module shares: where the repository and ../shared are, the prepared-dataset
cache check, and the corrupt-line policy of the line-oriented readers."""
from __future__ import annotations

import json
import os
import pathlib

from ctrjax.data.schema import SchemaError
from ctrjax.data.writer import is_complete

REPO = pathlib.Path(__file__).resolve().parents[1]
CORRUPT_POLICIES = ("skip", "error")
MAX_CORRUPT_EXAMPLES = 10


def shared_root() -> pathlib.Path:
  """``$CTRJAX_SHARED`` if set, else ``<repo>/../shared``."""
  return pathlib.Path(os.environ.get("CTRJAX_SHARED", REPO.parent / "shared"))


def resolve(p: str | os.PathLike) -> pathlib.Path:
  """An absolute path; a relative one is taken against the repository root."""
  p = pathlib.Path(p).expanduser()
  return (p if p.is_absolute() else REPO / p).resolve()


def reuse_cached(out_dir: pathlib.Path, args: dict, version: int, label: str) -> bool:
  """True when ``out_dir`` is a complete dataset prepared with the same arguments and prep version
  (and says so); False when it must be (re)built, saying why if a stale copy is there."""
  if not is_complete(out_dir):
    return False
  try:
    prev = json.loads((out_dir / "stats.json").read_text()).get("prep", {})
  except (OSError, ValueError, AttributeError):
    prev = {}
  if prev.get("args") == args and prev.get("version") == version:
    print(f"{label}: reusing cached {out_dir} (same prep args)")
    return True
  print(f"{label}: rebuilding {out_dir} (prep args/version differ from the cached copy)")
  return False


class CorruptLines:
  """The corrupt-line policy: 'skip' counts each bad line per source (``counts``) and keeps the
  first few as "file, line N: reason" (``examples``); 'error' raises naming file and line."""

  def __init__(self, on_corrupt: str, sources):
    self.on_corrupt = on_corrupt
    self.corrupt = {source: 0 for source in sources}
    self.examples: list[str] = []

  def bad(self, source: str, path, lineno: int, reason: str) -> None:
    where = f"{path}, line {lineno}: {reason}"
    if self.on_corrupt == "error":
      raise SchemaError(f"{where} (on_corrupt='error'; 'skip' counts and skips corrupt lines)")
    self.corrupt[source] += 1
    if len(self.examples) < MAX_CORRUPT_EXAMPLES:
      self.examples.append(where)
