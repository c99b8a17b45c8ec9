"""What every data_prep module shares: where the repository and ../shared are, the prepared-dataset
cache check and its lock, and the corrupt-line policy of the line-oriented readers."""
from __future__ import annotations

import contextlib
import fcntl
import functools
import inspect
import json
import os
import pathlib

from ctrjax.data.dataset import Dataset
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


@contextlib.contextmanager
def exclusive(lock_path: pathlib.Path):
  """An exclusive ``flock`` on ``lock_path`` for the block (its holder's pid written in it). The OS
  drops it when the holder dies, so a killed prep never blocks the next one."""
  lock_path.parent.mkdir(parents=True, exist_ok=True)
  with open(lock_path, "a+") as handle:
    try:
      fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      handle.seek(0)
      holder = handle.read().strip() or "?"
      print(f"waiting for process {holder}, which holds {lock_path} (preparing the same data)", flush=True)
      fcntl.flock(handle, fcntl.LOCK_EX)
    handle.seek(0)
    handle.truncate()
    handle.write(str(os.getpid()))
    handle.flush()
    try:
      yield
    finally:
      fcntl.flock(handle, fcntl.LOCK_UN)


def one_at_a_time(prepare):
  """Runs a module's ``prepare(..., out_root, ...)`` under an exclusive lock of its cache,
  ``<out_root>/.<module>.lock``: processes preparing concurrently (grid workers, two shells) build
  each dataset once, in turn; the ones that waited find it complete and reuse it. The build itself
  writes ``<dir>.partial`` and renames it into place (DatasetWriter), so a crash leaves no
  half-written ``<dir>``."""
  signature = inspect.signature(prepare)

  @functools.wraps(prepare)
  def locked(*args, **kwargs):
    bound = signature.bind(*args, **kwargs)
    bound.apply_defaults()
    module = prepare.__module__.rsplit(".", 1)[-1]
    with exclusive(resolve(bound.arguments["out_root"]) / f".{module}.lock"):
      return prepare(*args, **kwargs)
  return locked


def damage(out_dir: pathlib.Path) -> str | None:
  """Why the complete-looking dataset ``out_dir`` cannot be used (a missing or cut column, a bad
  schema.json or stats.json), or None. Cheap: opens the columns without reading them."""
  try:
    Dataset(out_dir, validate=False)
  except SchemaError as e:
    return str(e)
  return None


def reuse_cached(out_dir: pathlib.Path, args: dict, version: int, label: str) -> bool:
  """True when ``out_dir`` is an intact dataset prepared with the same arguments and prep version
  (and says so); False when it must be (re)built, saying why if a stale or damaged copy is there."""
  if not is_complete(out_dir):
    return False
  damaged = damage(out_dir)
  if damaged:
    print(f"{label}: rebuilding {out_dir}: the cached copy is damaged ({damaged})")
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
