"""Dataset schema: what every column is, which group it feeds and which embedding table it uses.

Conventions (all datasets):
  * id 0 is padding (empty multi-value slots, left-padded behaviour positions);
  * id 1 is OOV: a value never seen in the training split (counted per split in stats.json);
  * real ids start at 2, so ``vocab_size`` counts padding and OOV.
Behaviour sequences are left-padded ("pre"), oldest -> newest, truncated to ``max_len``.
"""
from __future__ import annotations

import dataclasses
import json
import pathlib

GROUPS = ("item", "behavior", "user", "context", "label", "meta")
MODEL_GROUPS = ("item", "behavior", "user", "context")      # the groups models embed (on device)
KINDS = ("categorical", "numeric", "sequence")
SPLITS = ("train", "valid", "test")
PAD_ID = 0
OOV_ID = 1
FIRST_ID = 2


class SchemaError(ValueError):
  """A dataset does not match its schema; the message names the field, split or file."""


@dataclasses.dataclass(frozen=True)
class Field:
  """One column.

  kind:
    categorical: int32 ids, shape () or (k,) for a multi-valued field (e.g. genres; 0-padded, mean-pooled).
    numeric: float values (or int timestamps in ``meta``/``behavior``), shape () or (max_len,).
    sequence: behaviour ids, shape (max_len,) or (max_len, k); left-padded with 0.
  table: embedding table the ids index; fields sharing a table share rows (behaviour item ids use
    the candidate item's table). Defaults to the field's own name.
  rows: the table's row count when padded beyond vocab_size (rows never looked up, so that a table
    row-sharded over devices divides evenly: ``Schema.padded_rows``); None = vocab_size.
  """
  name: str
  group: str
  kind: str
  dtype: str = "int32"
  shape: tuple[int, ...] = ()
  vocab_size: int | None = None
  table: str | None = None
  max_len: int | None = None
  pad_id: int | None = None
  oov_id: int | None = None
  description: str = ""
  rows: int | None = None

  def __post_init__(self):
    object.__setattr__(self, "shape", tuple(int(s) for s in self.shape))
    where = f"schema field {self.name!r}"
    if self.group not in GROUPS:
      raise SchemaError(f"{where}: group {self.group!r} not in {GROUPS}")
    if self.kind not in KINDS:
      raise SchemaError(f"{where}: kind {self.kind!r} not in {KINDS}")
    if self.has_ids:
      if not self.vocab_size or self.vocab_size < 1:
        raise SchemaError(f"{where}: {self.kind} field needs vocab_size >= 1")
      if self.dtype != "int32":
        raise SchemaError(f"{where}: {self.kind} field must be int32, got {self.dtype}")
      if self.table is None:
        object.__setattr__(self, "table", self.name)
      if self.pad_id is None:
        object.__setattr__(self, "pad_id", PAD_ID)
    if self.rows is not None and not (self.has_ids and self.rows >= self.vocab_size):
      raise SchemaError(f"{where}: rows={self.rows} must be >= vocab_size={self.vocab_size} of an id field")
    if self.kind == "sequence":
      if not self.shape or self.max_len != self.shape[0]:
        raise SchemaError(f"{where}: sequence shape {self.shape} must start with max_len={self.max_len}")

  @property
  def has_ids(self) -> bool:
    """Whether the column holds embedding-table ids (and so is range-checked and counted)."""
    return self.kind in ("categorical", "sequence") and self.group not in ("label", "meta")


@dataclasses.dataclass(frozen=True)
class Schema:
  """An ordered, hashable collection of fields (hashable so models can hold it as an attribute)."""
  fields: tuple[Field, ...]

  def __post_init__(self):
    names = [f.name for f in self.fields]
    dup = {n for n in names if names.count(n) > 1}
    if dup:
      raise SchemaError(f"schema: duplicate field names {sorted(dup)}")
    sizes: dict[str, int] = {}
    for f in self.fields:
      if f.has_ids:
        if sizes.setdefault(f.table, f.vocab_size) != f.vocab_size:
          raise SchemaError(f"schema field {f.name!r}: table {f.table!r} has vocab_size "
                            f"{sizes[f.table]} elsewhere, {f.vocab_size} here")
    if sum(f.group == "label" for f in self.fields) != 1:
      raise SchemaError("schema: exactly one field must have group 'label'")

  def __getitem__(self, name: str) -> Field:
    for f in self.fields:
      if f.name == name:
        return f
    raise KeyError(f"schema has no field {name!r}; fields: {[f.name for f in self.fields]}")

  def group(self, group: str) -> tuple[Field, ...]:
    return tuple(f for f in self.fields if f.group == group)

  @property
  def label(self) -> Field:
    return self.group("label")[0]

  @property
  def tables(self) -> dict[str, int]:
    """Embedding table name -> number of rows (its vocab size, or more when padded)."""
    out: dict[str, int] = {}
    for f in self.fields:
      if f.has_ids:
        out.setdefault(f.table, f.rows or f.vocab_size)
    return out

  @property
  def vocab_sizes(self) -> dict[str, int]:
    """Embedding table name -> number of ids (its rows before padding)."""
    out: dict[str, int] = {}
    for f in self.fields:
      if f.has_ids:
        out.setdefault(f.table, f.vocab_size)
    return out

  def padded_rows(self, multiple: int) -> "Schema":
    """This schema with every table's rows rounded up to a multiple of ``multiple`` (the devices
    a table is row-sharded over); the padding rows hold zeros and no id reaches them."""
    return Schema(tuple(dataclasses.replace(f, rows=-(-f.vocab_size // multiple) * multiple)
                        if f.has_ids else f for f in self.fields))

  @property
  def behavior_key(self) -> Field | None:
    """The behaviour field whose non-zero ids define the behaviour mask (the first sequence field)."""
    seq = [f for f in self.group("behavior") if f.kind == "sequence"]
    return seq[0] if seq else None

  def to_json(self) -> dict:
    return {"fields": [{k: v for k, v in dataclasses.asdict(f).items()
                        if v not in (None, "")} for f in self.fields]}

  @classmethod
  def from_json(cls, obj: dict, source: str = "schema.json") -> "Schema":
    """Builds the schema from parsed JSON; every error is a SchemaError that names ``source``."""
    if not isinstance(obj, dict) or not isinstance(obj.get("fields", []), list):
      raise SchemaError(f"{source}: expected an object {{\"fields\": [...]}}, got {type(obj).__name__}")
    known = {f.name for f in dataclasses.fields(Field)}
    fields = []
    for i, raw in enumerate(obj.get("fields", [])):
      if not isinstance(raw, dict):
        raise SchemaError(f"{source}: field #{i} is a {type(raw).__name__}, not an object")
      unknown = set(raw) - known
      if unknown:
        raise SchemaError(f"{source}: field #{i} ({raw.get('name')!r}) has unknown keys {sorted(unknown)}")
      try:
        fields.append(Field(**raw))
      except (TypeError, ValueError) as e:
        raise SchemaError(f"{source}: field #{i} ({raw.get('name')!r}): {e}") from None
    try:
      return cls(tuple(fields))
    except SchemaError as e:
      raise SchemaError(f"{source}: {e}") from None

  def save(self, path: str | pathlib.Path) -> None:
    pathlib.Path(path).write_text(json.dumps(self.to_json(), indent=1) + "\n")

  @classmethod
  def load(cls, path: str | pathlib.Path) -> "Schema":
    """Reads ``path``; a missing or damaged file is a SchemaError naming it and how to repair it."""
    path = pathlib.Path(path)
    repair = f"(a damaged prepared dataset: delete {path.parent} and rerun its prep)"
    try:
      obj = json.loads(path.read_text())
    except FileNotFoundError:
      raise SchemaError(f"{path}: missing (not a ctrjax dataset directory?)") from None
    except json.JSONDecodeError as e:
      raise SchemaError(f"{path}: invalid JSON at line {e.lineno}: {e.msg} {repair}") from None
    except UnicodeDecodeError as e:
      raise SchemaError(f"{path}: not UTF-8 ({e.reason} at byte {e.start}) {repair}") from None
    try:
      return cls.from_json(obj, source=str(path))
    except SchemaError as e:
      raise SchemaError(f"{e} {repair}") from None
