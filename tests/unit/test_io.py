"""Atomic writes: outputs appear whole or not at all, with ordinary permissions."""

import os
import stat

import numpy as np
import pandas as pd
import pytest

from astrodag.io import atomic_path, save_npy, write_json, write_table


def test_failed_write_leaves_previous_file_and_no_temporary(tmp_path):
    target = tmp_path / "out.json"
    write_json(target, {"epoch": 1})
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed mid-write")
    assert target.read_text().strip().startswith("{")
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]


def test_outputs_get_umask_permissions_not_mkstemp_0600(tmp_path):
    old = os.umask(0o022)
    try:
        write_json(tmp_path / "a.json", {"x": np.float32(1.5)})
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a.json").stat().st_mode) == 0o644


def test_tables_and_arrays_round_trip(tmp_path):
    frame = pd.DataFrame({"a": [1, 2], "b": [0.5, 0.25]})
    write_table(tmp_path / "t.csv", frame)
    write_table(tmp_path / "t.parquet", frame)
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "t.csv"), frame)
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "t.parquet"), frame)
    save_npy(tmp_path / "x.npy", np.arange(6).reshape(2, 3))
    assert np.load(tmp_path / "x.npy", mmap_mode="r").sum() == 15
    with pytest.raises(ValueError, match="unsupported table suffix"):
        write_table(tmp_path / "t.txt", frame)


def test_read_table_csv_tsv_and_parquet_with_dtypes(tmp_path):
    from astrodag.io import read_table

    frame = pd.DataFrame({"obsid": ["007", "010"], "mjd": [55000.5, 55001.25], "n": [3, 4], "ok": [True, False],
                          "extra": ["a", "b"]})
    for suffix in (".csv", ".tsv", ".parquet"):
        path = tmp_path / f"t{suffix}"
        if suffix == ".tsv":
            frame.to_csv(path, sep="\t", index=False)
        else:
            write_table(path, frame)
        table = read_table(path, ("obsid", "mjd"), {"obsid": str, "mjd": float, "n": "int", "ok": bool})
        assert list(table["obsid"]) == ["007", "010"]  # text as written, leading zeros kept
        assert table["mjd"].dtype == np.float64 and list(table["mjd"]) == [55000.5, 55001.25]
        assert table["n"].dtype == np.int64 and table["ok"].dtype == bool and list(table["ok"]) == [True, False]
        assert list(read_table(path, ("obsid",), only_required=True).columns) == ["obsid"]


def test_read_table_names_missing_columns_and_bad_values(tmp_path):
    from astrodag.errors import InputDataError
    from astrodag.io import read_table

    path = tmp_path / "runs.csv"
    path.write_text("name,mjd,count\n" + "".join(f"r{i},{55000 + i},{i}\n" for i in range(20)).replace(
        "55016", "abc").replace(",7\n", ",7.5\n"))
    with pytest.raises(InputDataError, match=r"runs\.csv: missing column\(s\) ra, dec \(found: name, mjd, count\)"):
        read_table(path, ("name", "ra", "dec"))
    with pytest.raises(InputDataError, match=r"runs\.csv: row 17 \(line 18\), column 'mjd': 'abc' is not a number"):
        read_table(path, ("mjd",), {"mjd": float})
    with pytest.raises(InputDataError, match=r"row 8 \(line 9\), column 'count': 7\.5 is not an integer"):
        read_table(path, ("count",), {"count": int})
    frame = pd.DataFrame({"x": [1.0, 2.0], "flag": ["yes", "no"]})
    write_table(tmp_path / "t.parquet", frame)
    with pytest.raises(InputDataError, match=r"t\.parquet: row 1, column 'flag': 'yes' is not true or false"):
        read_table(tmp_path / "t.parquet", ("x",), {"flag": bool})
    with pytest.raises(InputDataError, match=r"absent\.csv: pairs table not found"):
        read_table(tmp_path / "absent.csv", not_found="pairs table not found")
    with pytest.raises(InputDataError, match="unsupported suffix '.txt'"):
        read_table(tmp_path / "t.txt")
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(InputDataError, match=r"empty\.csv: file is empty"):
        read_table(tmp_path / "empty.csv")
    (tmp_path / "junk.parquet").write_text("not parquet")
    with pytest.raises(InputDataError, match=r"junk\.parquet: cannot read as Parquet"):
        read_table(tmp_path / "junk.parquet")
    # Blank numbers are NaN, except in integer columns.
    (tmp_path / "blank.csv").write_text("a,b\n1,\n2,3\n")
    assert read_table(tmp_path / "blank.csv", dtypes={"b": float})["b"].isna().tolist() == [True, False]
    with pytest.raises(InputDataError, match=r"row 1 \(line 2\), column 'b': is empty"):
        read_table(tmp_path / "blank.csv", dtypes={"b": int})
