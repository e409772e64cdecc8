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
