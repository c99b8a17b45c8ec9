"""Imports point down only: ctrjax/ (the library) < data_prep/ < configs/ < experiments/ (grid runner,
report, CLI). Every .py of a floor is parsed (ast, so function-local imports count too) and an import of
a floor above it, of benchmarks/ or of tests/ fails naming file:line."""
import ast
import pathlib

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
OUTSIDE = ("benchmarks", "tests")
ABOVE = {
    "ctrjax": ("data_prep", "configs", "experiments", *OUTSIDE),
    "data_prep": ("configs", "experiments", *OUTSIDE),
    "configs": ("experiments", *OUTSIDE),
    "experiments": OUTSIDE,
}


def imported_modules(tree: ast.AST):
  """(line, absolute module name) of every import statement and importlib.import_module("...") call."""
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      yield from ((node.lineno, alias.name) for alias in node.names)
    elif isinstance(node, ast.ImportFrom) and node.level == 0:
      yield node.lineno, node.module
    elif (isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", None))
          in ("import_module", "__import__") and node.args and isinstance(node.args[0], ast.Constant)
          and isinstance(node.args[0].value, str)):
      yield node.lineno, node.args[0].value


def upward_imports(floor: str, root: pathlib.Path = REPO) -> list[str]:
  """``file:line imports module`` for each import in ``root/floor`` of a package it may not use."""
  found = []
  for path in sorted((root / floor).rglob("*.py")):
    for line, module in sorted(imported_modules(ast.parse(path.read_text(), str(path)))):
      if module.split(".")[0] in ABOVE[floor]:
        found.append(f"{path.relative_to(root)}:{line} imports {module}")
  return found


@pytest.mark.parametrize("floor", [
    "ctrjax", "data_prep", "configs", "experiments"])
def test_no_upward_imports(floor):
  assert not upward_imports(floor), f"{floor}/ imports from a floor above it:\n" + "\n".join(upward_imports(floor))


def test_an_upward_import_is_found_with_its_line(tmp_path):
  (tmp_path / "ctrjax" / "train").mkdir(parents=True)
  (tmp_path / "ctrjax" / "train" / "x.py").write_text(
      "import numpy\nfrom ctrjax import data\n\ndef f():\n  from experiments.grid import runs\n"
      "  importlib.import_module('data_prep.movielens')\n")
  assert upward_imports("ctrjax", tmp_path) == ["ctrjax/train/x.py:5 imports experiments.grid",
                                                "ctrjax/train/x.py:6 imports data_prep.movielens"]
