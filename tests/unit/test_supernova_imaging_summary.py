"""The imaging report's recovery against the injected SN magnitude (astrodag.evaluation.completeness)."""

import numpy as np
import pandas as pd

from astrodag.supernova.imaging.summary import MIN_PAIRS_PER_BIN, _recovery_by_magnitude


def test_recovery_by_magnitude_counts_images_and_distinct_supernovae():
    # 12 science images of 6 SNe (two each): bright ones recovered, faint ones not.
    pairs = pd.DataFrame({
        "sn_name": [f"SN{i // 2}" for i in range(12)],
        "sn_mag": np.linspace(16.0, 21.5, 12),
        "sn_recovered": [True] * 7 + [False] * 5,
    })
    rows = _recovery_by_magnitude(pairs)
    assert len(rows) == 4  # quartiles of 12 images, 3 each
    assert [row["n"] for row in rows] == [3, 3, 3, 3]
    assert [row["recovered"] for row in rows] == [3, 3, 1, 0]
    assert [row["supernovae"] for row in rows] == [2, 2, 2, 2]
    assert rows[0]["fraction"] == 1.0 and rows[-1]["fraction"] == 0.0
    assert 0.0 < rows[2]["fraction_low"] < 1 / 3 < rows[2]["fraction_high"] < 1.0


def test_too_few_images_or_no_magnitudes_give_no_table():
    few = pd.DataFrame({"sn_name": ["a", "b"], "sn_mag": [18.0, 19.0], "sn_recovered": [True, False]})
    assert len(few) < MIN_PAIRS_PER_BIN and _recovery_by_magnitude(few) == []
    assert _recovery_by_magnitude(few.drop(columns="sn_mag")) == []
