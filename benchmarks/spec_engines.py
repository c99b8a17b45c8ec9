"""Why data_prep/spec.py runs on DuckDB: the behaviour derivation in DuckDB and in Polars, side by side.

  nice -n 5 .venv/bin/python -m benchmarks.spec_engines [--rows 4000000 20000000] [--memory_limit 2GB 1GB]
      [--work /tmp/spec_engines]

The task: a Tianchi UserBehavior-format log (benchmarks/spec_scale.py's generator, gzip CSV); samples =
the last day's events; per sample the ids (dense ranks) of the item and category of the user's last
30 strictly earlier events, left-padded, as (rows, 30) numpy arrays. DuckDB: window lists over
variable row frames (ROWS BETWEEN L + rn - rs PRECEDING AND rn - rs + 1 PRECEDING, empty for
non-samples), spilling beyond ``memory_limit``. Polars (2.1.0, not a ctrjax dependency: pip install
polars to run this): lazy scan, streaming collect of the sorted log, then one numpy gather per
history position over the whole sorted log, which must fit in memory (Polars has no out-of-core
window over row frames). Each engine runs in its own process; both outputs' checksums must agree.
Writes benchmarks/results/spec_engines.json.
"""
import argparse
import json
import pathlib
import resource
import subprocess
import sys
import time

import numpy as np

from benchmarks.spec_scale import LAST_DAY, generate_behavior

OUT = pathlib.Path(__file__).parent / "results" / "spec_engines.json"
L = 30
COLUMNS = ["user_id", "item_id", "category_id", "behavior_type", "timestamp"]


def duckdb_histories(path: str, memory_limit: str):
  import duckdb
  con = duckdb.connect()
  con.execute(f"SET memory_limit = '{memory_limit}'; SET preserve_insertion_order = false")
  con.execute(f"""CREATE TABLE ev AS SELECT * FROM read_csv('{path}', header = false, columns = {{'user_id': 'BIGINT',
      'item_id': 'BIGINT', 'category_id': 'BIGINT', 'behavior_type': 'VARCHAR', 'timestamp': 'BIGINT'}})""")
  for c in ("item_id", "category_id"):
    con.execute(f"CREATE TABLE v_{c} AS SELECT {c} AS v, CAST(row_number() OVER (ORDER BY {c}) + 1 AS INTEGER) AS id "
                f"FROM (SELECT DISTINCT {c} FROM ev)")
  sample = f"timestamp >= {LAST_DAY}"
  frame = (f"ROWS BETWEEN (CASE WHEN {sample} THEN {L} + rn - rs ELSE 0 END) PRECEDING "
           f"AND (CASE WHEN {sample} THEN rn - rs + 1 ELSE 1 END) PRECEDING")
  con.execute(f"""CREATE TABLE w AS SELECT hi, hc FROM (
      SELECT *, list(iid) OVER (PARTITION BY user_id ORDER BY timestamp, iid {frame}) hi,
                list(cid) OVER (PARTITION BY user_id ORDER BY timestamp, iid {frame}) hc
      FROM (SELECT e.user_id, e.timestamp, vi.id iid, vc.id cid,
                   row_number() OVER (PARTITION BY e.user_id ORDER BY e.timestamp, vi.id) rn,
                   rank() OVER (PARTITION BY e.user_id ORDER BY e.timestamp) rs
            FROM ev e JOIN v_item_id vi ON e.item_id = vi.v JOIN v_category_id vc ON e.category_id = vc.v))
    WHERE {sample}""")
  pad = lambda h: f"list_concat(list_resize([]::INTEGER[], {L} - len(coalesce({h}, [])), 0), coalesce({h}, []))"
  positions = ", ".join(f"{pad(h)}[{k + 1}] AS {h}{k}" for h in ("hi", "hc") for k in range(L))
  got = con.execute(f"SELECT {positions} FROM w").fetchnumpy()
  return [np.stack([got[f"{h}{k}"] for k in range(L)], 1) for h in ("hi", "hc")]


def polars_histories(path: str, memory_limit: str):
  import polars as pl
  lf = pl.scan_csv(path, has_header=False, new_columns=COLUMNS, schema_overrides={
      "user_id": pl.Int64, "item_id": pl.Int64, "category_id": pl.Int64, "timestamp": pl.Int64})
  for c in ("item_id", "category_id"):
    vocab = lf.select(pl.col(c).unique().sort()).with_row_index("id", offset=2)
    lf = lf.join(vocab.select(pl.col(c), pl.col("id").cast(pl.Int32).alias(c + "_id")), on=c)
  df = (lf.select("user_id", "timestamp", pl.col("item_id_id").alias("iid"), pl.col("category_id_id").alias("cid"))
          .sort("user_id", "timestamp", "iid").with_row_index("g")
          .with_columns(pl.col("g").min().over("user_id").alias("user_start"),
                        pl.col("g").min().over("user_id", "timestamp").alias("run_start"))
          .collect(engine="streaming"))
  samples = df.filter(pl.col("timestamp") >= LAST_DAY)
  index = samples["run_start"].to_numpy().astype(np.int64)[:, None] - L + np.arange(L)
  valid = index >= samples["user_start"].to_numpy().astype(np.int64)[:, None]
  return [np.where(valid, df[c].to_numpy()[np.maximum(index, 0)], 0) for c in ("iid", "cid")]


def main():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--rows", type=int, nargs="+", default=[4_000_000, 20_000_000])
  ap.add_argument("--memory_limit", nargs="+", default=["2GB", "1GB"], help="DuckDB's, one run per value")
  ap.add_argument("--work", default="/tmp/spec_engines")
  ap.add_argument("--run", nargs=3, help=argparse.SUPPRESS)
  a = ap.parse_args()
  if a.run:
    engine, path, memory_limit = a.run
    t = time.perf_counter()
    item, category = {"duckdb": duckdb_histories, "polars": polars_histories}[engine](path, memory_limit)
    print(json.dumps({"seconds": time.perf_counter() - t, "samples": len(item),
                      "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                      "checksum": int(item.sum()) + 7 * int(category.sum())}))
    return
  work = pathlib.Path(a.work)
  work.mkdir(parents=True, exist_ok=True)
  results = json.loads(OUT.read_text()) if OUT.is_file() else {}
  results["task"] = f"histories of the last {L} strictly earlier events for the last day's events"
  for rows in a.rows:
    path = work / f"behavior_{rows}.csv.gz"
    if not path.exists():
      generate_behavior(path, rows)
    for engine, limit in [*(("duckdb", m) for m in a.memory_limit), ("polars", "-")]:
      proc = subprocess.run([sys.executable, "-m", "benchmarks.spec_engines", "--run", engine, str(path), limit],
                            capture_output=True, text=True)
      if proc.returncode:
        raise RuntimeError(proc.stderr[-3000:])
      run = {"rows": rows, "engine": engine, "memory_limit": limit, **json.loads(proc.stdout.splitlines()[-1])}
      results["runs"] = [r for r in results.get("runs", []) if (r["rows"], r["engine"], r["memory_limit"])
                         != (rows, engine, limit)] + [run]
      print(f"{rows:>11,} rows  {engine:7s} limit {limit:4s}  {run['seconds']:6.1f} s  peak RSS "
            f"{run['peak_rss_mb']:6.0f} MB  samples {run['samples']:,}  checksum {run['checksum']}", flush=True)
      OUT.write_text(json.dumps(results, indent=1) + "\n")
  print(f"wrote {OUT}")


if __name__ == "__main__":
  main()
