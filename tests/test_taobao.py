"""data_prep/taobao.py on the samples' real Taobao rows: time split, leakage, alignment, OOV, corrupt lines.

The samples hold no Tianchi table verbatim: FuxiCTR's tiny_csv is raw_sample joined with ad_feature
and user_profile (time stamps as UTC+8 date strings, nonclk dropped), so the tests split its rows back
into the three tables. No sample has a behaviour log with time stamps, so ``_behaviors`` makes one up
around the impression times, with real cate/brand values of the sample ads.
"""
import csv
import datetime
import gzip

import numpy as np
import pytest

from conftest import shared_path

from configs import base as base_config
from ctrjax.data.dataset import Dataset
from ctrjax.data.schema import OOV_ID, SPLITS, SchemaError
import data_prep
from data_prep import taobao

# FuxiCTR's valid and test samples are the same untouched join; its train sample has 5 adgroup ids
# replaced (so they collide with other ads' attributes) and a made-up click_sequence.
SAMPLE = ("data", "taobao-ad-samples", "fuxictr_tiny_csv_test_sample.csv")
T0 = 1494000000            # 2017-05-06 00:00:00 UTC+8: the sample's impressions are at T0, T0+1, T0+2
SECOND = ("2017-05-06 00:00:01", "2017-05-06 00:00:02")  # valid_start, test_start: one second each
MAX_LEN = 4
NO_PROFILE_USER = 693616   # its joined rows have every profile field empty: absent from user_profile
NEW_CATE = 999999          # a behaviour category seen only after the train second


def _sample_rows():
  with open(shared_path(*SAMPLE), newline="") as fh:
    return list(csv.DictReader(fh))


def _unix(text):
  when = datetime.datetime.strptime(text, "%Y-%m-%d %H:%M:%S").replace(tzinfo=taobao.UTC8)
  return int(when.timestamp())


def _tianchi_tables(rows):
  """The joined rows split back into raw_sample, ad_feature and user_profile lines (headers first)."""
  raw = ["user,time_stamp,adgroup_id,pid,nonclk,clk"]
  ads = {"adgroup_id": "adgroup_id,cate_id,campaign_id,customer,brand,price"}
  profiles = {"userid": "userid," + ",".join(taobao.PROFILE_FIELDS) + " "}  # the real trailing space
  for r in rows:
    clk = int(r["clk"])
    raw.append(f"{r['userid']},{_unix(r['time_stamp'])},{r['adgroup_id']},{r['pid']},{1 - clk},{clk}")
    ads.setdefault(r["adgroup_id"], ",".join([r["adgroup_id"], r["cate_id"], r["campaign_id"], r["customer"],
                                              r["brand"] or "NULL", r["price"]]))
    profile = [r[name] for name in taobao.PROFILE_FIELDS]
    if any(profile):
      profiles.setdefault(r["userid"], ",".join([r["userid"], *profile]))
  return {"raw_sample": raw, "ad_feature": list(ads.values()), "user_profile": list(profiles.values())}


def _behaviors(rows):
  """(user, time, btag, cate, brand) lines; per user 5 before T0 (two tied), 2 at T0+1, 1 at T0+2, 1 later."""
  users = sorted({int(r["userid"]) for r in rows})
  values = [(int(r["cate_id"]), r["brand"] or "NULL") for r in rows]
  out = []
  for u, user in enumerate(users):
    for j, offset in enumerate((-86400 * 3, -7200, -7200, -60, -1, 1, 1, 2, 3600)):
      cate, brand = values[(u * 9 + j) % len(values)]
      if offset == 1 and j == 6 and u % 2:
        cate = NEW_CATE
      out.append((user, T0 + offset, taobao.BTAGS[(u + j) % 4], cate, brand))
  # Interleave users so that the log is not sorted by user or time.
  return out[::2] + out[1::2]


def _window(log, user, when):
  """The user's last MAX_LEN behaviours strictly before ``when``, by (time, log order)."""
  return sorted((b for b in log if b[0] == user and b[1] < when), key=lambda b: b[1])[-MAX_LEN:]


def _write(directory, tables, behaviors=None):
  directory.mkdir(parents=True, exist_ok=True)
  for name, lines in tables.items():
    (directory / f"{name}.csv").write_text("".join(line + "\n" for line in lines))
  if behaviors is not None:
    lines = ["user,time_stamp,btag,cate,brand", *(",".join(map(str, b)) for b in behaviors)]
    (directory / "behavior_log.csv").write_text("".join(line + "\n" for line in lines))
  return directory


def _vocab(path, table):
  return [line.split("\t")[1] for line in (path / "vocab" / f"{table}.tsv").read_text().splitlines()]


def _cols(ds, split):
  return {name: np.asarray(col) for name, col in ds.columns[split].items()}


@pytest.fixture(scope="module")
def rows():
  return _sample_rows()


@pytest.fixture(scope="module")
def raw(rows, tmp_path_factory):
  return _write(tmp_path_factory.mktemp("raw"), _tianchi_tables(rows), _behaviors(rows))


@pytest.fixture(scope="module")
def prepared(raw, tmp_path_factory):
  path = taobao.prepare(tmp_path_factory.mktemp("prep"), raw_dir=raw, max_len=MAX_LEN,
                        valid_start=SECOND[0], test_start=SECOND[1])
  return Dataset(path)  # validates dtypes, shapes and id ranges


def test_real_rows_prepare_with_the_default_split(rows, tmp_path):
  raw = _write(tmp_path / "raw", _tianchi_tables(rows), _behaviors(rows))
  ds = Dataset(taobao.prepare(tmp_path / "prep", raw_dir=raw))
  s = ds.stats
  assert ds.path.name == "taobao-len50"
  assert s["rows"] == {"train": 100, "valid": 0, "test": 0}  # all on 2017-05-06, day 1 of 8
  assert (s["num_impressions"], s["num_users"], s["num_adgroups"], s["num_behaviors"]) == (100, 24, 99, 216)
  assert (s["impressions_without_ad_feature"], s["impressions_without_profile"]) == (0, 8)
  assert s["users_without_profile"] == 1
  assert s["missing_tables"] == [] and s["corrupt_lines"] == dict.fromkeys(taobao.HEADERS, 0)
  assert s["behavior_time_range"] == [T0 - 3 * 86400, T0 + 3600]
  assert s["positive_rate"]["train"] == pytest.approx(sum(r["clk"] == "1" for r in rows) / 100)
  assert [f.name for f in ds.schema.group("behavior")] == [f"hist_{n}" for n in taobao.HISTORY_FIELDS]
  c = _cols(ds, "train")
  first = rows[0]  # 874257 at 00:00:00 saw adgroup 172298 (cate 5443, brand 339907, price 3.9) in 430548_1007
  assert (_vocab(ds.path, "adgroup_id")[c["adgroup_id"][0]], c["user"][0], c["timestamp"][0]) == (
      first["adgroup_id"], int(first["userid"]), T0)
  assert _vocab(ds.path, "cate")[c["cate_id"][0]] == first["cate_id"] == "5443"
  assert _vocab(ds.path, "brand")[c["brand"][0]] == first["brand"] == "339907"
  assert _vocab(ds.path, "pid")[c["pid"][0]] == "430548_1007"
  assert c["price"][0] == pytest.approx(np.log1p(3.9))
  assert (c["hour"] == 2).all() and (c["weekday"] == 2 + 5).all()  # midnight, a Saturday
  assert "NULL" in _vocab(ds.path, "brand")
  assert _vocab(ds.path, "new_user_class_level") == ["<pad>", "<oov>", "<empty>"]  # empty in the join


def test_time_split_by_second(prepared, rows):
  assert prepared.stats["rows"] == {"train": 28, "valid": 33, "test": 39}
  for split, second in zip(SPLITS, range(3)):
    c = _cols(prepared, split)
    assert (c["timestamp"] == T0 + second).all()
    expected = sorted(int(r["userid"]) for r in rows if _unix(r["time_stamp"]) == T0 + second)
    assert sorted(c["user"].tolist()) == expected
    assert c["label"].sum() == sum(r["clk"] == "1" for r in rows if _unix(r["time_stamp"]) == T0 + second)


def test_histories_are_strictly_earlier_behaviours_by_hand(prepared, rows):
  """Every row's history equals the last MAX_LEN behaviours of its user strictly before it (no leakage)."""
  log = _behaviors(rows)
  cates, brands, btags = (_vocab(prepared.path, t) for t in ("cate", "brand", "btag"))
  train = [r for r in rows if _unix(r["time_stamp"]) == T0]
  train_windows = [b for r in train for b in _window(log, int(r["userid"]), T0)]
  train_cates = {str(b[3]) for b in train_windows} | {r["cate_id"] for r in train}
  train_brands = {str(b[4]) for b in train_windows} | {r["brand"] or "NULL" for r in train}
  assert sorted(cates[2:]) == sorted(train_cates) and sorted(brands[2:]) == sorted(train_brands)
  checked = 0
  for split in SPLITS:
    c = _cols(prepared, split)
    for i in range(len(c["label"])):
      when = int(c["timestamp"][i])
      mine = _window(log, int(c["user"][i]), when)
      valid = c["hist_timestamp"][i] != 0
      assert (c["hist_timestamp"][i][valid] < when).all()
      assert c["hist_timestamp"][i][valid].tolist() == [b[1] for b in mine]
      assert [btags[k] for k in c["hist_btag"][i][valid]] == [b[2] for b in mine]
      for name, vocab, seen, col in (("cate", cates, train_cates, 3), ("brand", brands, train_brands, 4)):
        assert [vocab[k] for k in c[f"hist_{name}"][i][valid]] == [
            str(b[col]) if str(b[col]) in seen else "<oov>" for b in mine]
      checked += 1
  assert checked == 100


def test_same_second_behaviours_are_excluded(prepared):
  """Behaviours at T0+1 are in the test rows' histories (T0+2) but never in the valid rows' (T0+1)."""
  valid, test = _cols(prepared, "valid"), _cols(prepared, "test")
  assert (valid["hist_timestamp"] < T0 + 1).all()
  assert (test["hist_timestamp"][:, -2:] == T0 + 1).all()   # the two T0+1 behaviours are the newest
  assert (test["hist_timestamp"] < T0 + 2).all()
  assert (_cols(prepared, "train")["hist_timestamp"] < T0).all()


def test_history_fields_are_aligned_and_left_padded(prepared):
  for split in SPLITS:
    c = _cols(prepared, split)
    mask = c["hist_timestamp"] != 0
    assert (np.diff(mask.astype(int), axis=1) >= 0).all()  # padding only on the left
    for name in taobao.HISTORY_FIELDS:
      np.testing.assert_array_equal(c[f"hist_{name}"] != 0, mask, err_msg=f"{split}/hist_{name}")
    hour, weekday = taobao._hour_weekday(c["hist_timestamp"])
    np.testing.assert_array_equal(c["hist_hour"], np.where(mask, hour, 0))
    np.testing.assert_array_equal(c["hist_weekday"], np.where(mask, weekday, 0))
  train = _cols(prepared, "train")
  assert (train["hist_timestamp"] != 0).sum(1).tolist() == [MAX_LEN] * 28  # 5 earlier ones, truncated
  assert prepared.stats["empty_history"] == {"train": 0, "valid": 0, "test": 0}


def test_unseen_values_are_oov_and_counted(prepared, rows):
  oov = prepared.stats["oov"]
  train_ads = {r["adgroup_id"] for r in rows if _unix(r["time_stamp"]) == T0}
  train_users = {r["userid"] for r in rows if _unix(r["time_stamp"]) == T0}
  for split, second in (("valid", 1), ("test", 2)):
    mine = [r for r in rows if _unix(r["time_stamp"]) == T0 + second]
    assert oov[split]["adgroup_id"] == sum(r["adgroup_id"] not in train_ads for r in mine) > 0
    assert oov[split]["user_id"] == sum(r["userid"] not in train_users for r in mine) > 0
  assert oov["train"]["adgroup_id"] == oov["train"]["user_id"] == 0
  # NEW_CATE (odd users, T0+1) is only in test histories, as the newest behaviour: it ties with the
  # other T0+1 behaviour, which comes first in the log.
  test = _cols(prepared, "test")
  odd = np.isin(test["user"], sorted({int(r["userid"]) for r in rows})[1::2])
  assert oov["test"]["hist_cate"] >= odd.sum() > 0
  assert (test["hist_cate"][odd, -1] == OOV_ID).all()
  assert str(NEW_CATE) not in _vocab(prepared.path, "cate")


def test_user_without_profile_is_oov_in_every_profile_field(prepared):
  assert (prepared.stats["impressions_without_profile"], prepared.stats["users_without_profile"]) == (8, 1)
  for split in SPLITS:
    c = _cols(prepared, split)
    for name in taobao.PROFILE_FIELDS:
      assert (c[name][c["user"] == NO_PROFILE_USER] == OOV_ID).all()
  train = _cols(prepared, "train")
  for name in taobao.PROFILE_FIELDS:  # every train user's values are in the train vocabularies
    assert (train[name][train["user"] != NO_PROFILE_USER] != OOV_ID).all()


def test_corrupt_lines_are_counted_or_an_error_naming_file_and_line(rows, tmp_path):
  tables = _tianchi_tables(rows)
  tables["raw_sample"] = [*tables["raw_sample"][:3], "874257,2017-05-06,172298,430548_1007,1,0",
                          "874257,1494000000,172298,430548_1007,1,1", *tables["raw_sample"][3:]]
  tables["ad_feature"].append("172298,1,1,1,1,1.0")  # a repeated adgroup id: the first line wins
  raw = _write(tmp_path / "raw", tables, _behaviors(rows))
  with (raw / "behavior_log.csv").open("ab") as fh:
    fh.write(b"874257,1493990000,ipv,5443,339907\n874257,1493990000,pv,\xff,1\n\n")
  ds = Dataset(taobao.prepare(tmp_path / "prep", raw_dir=raw, max_len=MAX_LEN))
  s = ds.stats
  assert s["corrupt_lines"] == {"raw_sample": 2, "ad_feature": 0, "user_profile": 0, "behavior_log": 2}
  assert s["num_impressions"] == 100 and s["num_behaviors"] == 216
  assert s["duplicate_ids"] == {"ad_feature": 1, "user_profile": 0}
  assert _vocab(ds.path, "cate")[_cols(ds, "train")["cate_id"][0]] == "5443"
  examples = sorted(e.split("/raw/")[1] for e in s["corrupt_examples"])
  assert examples == ["behavior_log.csv, line 218: btag 'ipv' is not one of pv/cart/fav/buy",
                      "behavior_log.csv, line 219: not UTF-8 (invalid start byte at byte 21)",
                      "raw_sample.csv, line 4: time_stamp '2017-05-06' is not an integer in [0, 2^32)",
                      "raw_sample.csv, line 5: nonclk 1 + clk 1 != 1"]
  with pytest.raises(SchemaError, match=r"raw_sample\.csv, line 4: time_stamp"):
    taobao.prepare(tmp_path / "prep2", raw_dir=raw, on_corrupt="error")
  (raw / "ad_feature.csv").write_text("adgroup_id,cate_id,campaign_id,customer,brand\n")
  with pytest.raises(SchemaError, match=r"ad_feature\.csv, line 1: expected the ad_feature header"):
    taobao.prepare(tmp_path / "prep3", raw_dir=raw)


def test_truncated_gzip_behaviour_log_is_one_corrupt_line(rows, tmp_path):
  raw = _write(tmp_path / "raw", _tianchi_tables(rows), _behaviors(rows))
  data = gzip.compress((raw / "behavior_log.csv").read_bytes())
  (raw / "behavior_log.csv").unlink()
  (raw / "behavior_log.csv.gz").write_bytes(data[:len(data) * 2 // 3])
  s = Dataset(taobao.prepare(tmp_path / "prep", raw_dir=raw, max_len=MAX_LEN)).stats
  assert s["corrupt_lines"]["behavior_log"] == 1 and 0 < s["num_behaviors"] < 216
  assert "truncated or corrupt gzip stream" in s["corrupt_examples"][0]


def test_fast_and_line_by_line_behaviour_parsing_agree(rows):
  lines = [",".join(map(str, b)) + "\n" for b in _behaviors(rows)]
  key, btag, cate, brand = taobao._fast_behaviors(lines)
  slow = np.array(list(taobao._Reader("error").rows("behavior_log", "x", 2, lines)))
  np.testing.assert_array_equal(key, (slow[:, 0] << 32) | slow[:, 1])
  np.testing.assert_array_equal(np.stack([btag, cate, brand], 1), slow[:, 2:])
  assert (brand == taobao.MISSING).any()  # NULL brands take the fast path too
  bad_lines = ("1,2,ipv,3,4\n", "1,2,pv,,4\n", "1,2,pv,3,-1\n", "1,2,pv,3\n", "1,2.5,pv,3,4\n",
               "1,2,pv,3,4 5\n")
  for bad in bad_lines:
    assert taobao._fast_behaviors(lines[:3] + [bad]) is None, bad


def test_missing_tables_warn_and_are_explicit(rows, tmp_path):
  raw = tmp_path / "raw"
  raw.mkdir()
  text = "".join(line + "\n" for line in _tianchi_tables(rows)["raw_sample"])
  (raw / "raw_sample.csv.gz").write_bytes(gzip.compress(text.encode()))
  with pytest.warns(UserWarning) as caught:
    ds = Dataset(taobao.prepare(tmp_path / "prep", raw_dir=raw, max_len=MAX_LEN, valid_start=SECOND[0],
                                test_start=SECOND[1]))
  assert sorted(str(w.message).split("no ")[1].split(".csv")[0] for w in caught) == [
      "ad_feature", "behavior_log", "user_profile"]
  s = ds.stats
  assert s["missing_tables"] == ["ad_feature", "user_profile", "behavior_log"]
  assert s["empty_history"] == {"train": 28, "valid": 33, "test": 39}
  assert (s["impressions_without_ad_feature"], s["impressions_without_profile"]) == (100, 100)
  assert s["num_behaviors"] == 0
  for split in SPLITS:
    c = _cols(ds, split)
    for name in ("cate_id", "brand", "campaign_id", "customer", *taobao.PROFILE_FIELDS):
      assert (c[name] == OOV_ID).all()
    assert (c["price"] == 0).all() and (c["hist_cate"] == 0).all() and (c["hist_timestamp"] == 0).all()


def test_history_field_subset_cache_and_arguments(raw, tmp_path, capsys):
  path = taobao.prepare(tmp_path, raw_dir=raw, max_len=MAX_LEN, history_fields=("brand", "cate"))
  assert path.name == f"taobao-len{MAX_LEN}-hist-cate-brand"
  assert [f.name for f in Dataset(path).schema.group("behavior")] == ["hist_cate", "hist_brand"]
  capsys.readouterr()
  assert taobao.prepare(tmp_path, raw_dir=raw, max_len=MAX_LEN, history_fields="cate,brand") == path
  assert "reusing" in capsys.readouterr().out
  with pytest.raises(ValueError, match="history_fields"):
    taobao.prepare(tmp_path, raw_dir=raw, history_fields=("cate", "price"))
  with pytest.raises(ValueError, match="valid_start '2017-05-14' is after test_start"):
    taobao.prepare(tmp_path, raw_dir=raw, valid_start="2017-05-14")
  with pytest.raises(ValueError, match="test_start '5/13'"):
    taobao.prepare(tmp_path, raw_dir=raw, test_start="5/13")
  with pytest.raises(FileNotFoundError, match="raw_sample.csv"):
    taobao.prepare(tmp_path, raw_dir=tmp_path / "nowhere")


def test_config_dataset_name_taobao(raw, tmp_path):
  cfg = data_prep.switch_dataset(base_config.get_config().dataset, "taobao")
  cfg.max_len, cfg.raw_dir, cfg.out_root = MAX_LEN, str(raw), str(tmp_path)
  assert data_prep.prepare(cfg).name == f"taobao-len{MAX_LEN}"
  cfg.valid_start, cfg.test_start = SECOND
  path = data_prep.prepare(cfg)
  assert path.name == f"taobao-len{MAX_LEN}-valid20170506000001-test20170506000002"
  assert Dataset(path).stats["rows"] == {"train": 28, "valid": 33, "test": 39}
