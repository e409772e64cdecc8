"""The supernova catalogue: the shipped file, safe names, and clear errors for bad catalogues."""

from pathlib import Path

import pytest

from astrodag.errors import InputDataError
from astrodag.supernova.archive.catalog import CATALOG_COLUMNS, catalog_entry, load_catalog, safe_name

CATALOG = Path(__file__).resolve().parents[2] / "resources" / "supernovae.csv"
HEADER = ",".join(CATALOG_COLUMNS)


def write(tmp_path, *rows, header=HEADER):
    path = tmp_path / "sne.csv"
    path.write_text("\n".join((header,) + rows) + "\n")
    return path


def test_shipped_catalogue_is_valid_and_real():
    catalog = load_catalog(CATALOG)
    assert 16 <= len(catalog) <= 30
    assert catalog["safe_name"].is_unique
    fe = catalog_entry(catalog, "SN 2011fe")
    # SN 2011fe in M101: 14h03m05.7s +54d16'25" (Nugent et al. 2011), found on 2011 August 24.
    assert fe["ra"] == pytest.approx(210.7738, abs=1e-3) and fe["dec"] == pytest.approx(54.2737, abs=1e-3)
    assert fe["discovery_mjd"] == pytest.approx(55797.2, abs=0.1)
    assert fe["host"] == "M101" and fe["type"] == "Ia"
    assert catalog_entry(catalog, "SN_2014J")["host"] == "M82"  # found by its safe name too


@pytest.mark.parametrize("name, safe", [("SN 2011fe", "SN_2011fe"), ("AT 2019/abc  x", "AT_2019_abc_x"),
                                        (" SN 1993J ", "SN_1993J"), ("PS1-10jh", "PS1-10jh")])
def test_safe_name(name, safe):
    assert safe_name(name) == safe


def test_safe_name_rejects_names_without_safe_characters():
    with pytest.raises(ValueError):
        safe_name(" / ")


def test_blank_redshift_is_allowed(tmp_path):
    catalog = load_catalog(write(tmp_path, "SN A,10.0,-5.0,58000.5,Ia,,NGC 1"))
    assert catalog["redshift"].isna().all() and catalog["ra"].iloc[0] == 10.0


@pytest.mark.parametrize("rows, header, message", [
    (("SN A,10,5,58000,Ia,0.01",), "sn_name,ra,dec,discovery_mjd,type,redshift", "missing column(s) host"),
    (("SN A,400,5,58000,Ia,0.01,X",), HEADER, "row 1 (line 2): ra 400.0 must be in [0, 360)"),
    (("SN A,10,-91,58000,Ia,0.01,X",), HEADER, "dec -91.0 must be in [-90, 90]"),
    (("SN A,10,5,soon,Ia,0.01,X",), HEADER, "row 1 (line 2), column 'discovery_mjd': 'soon' is not a number"),
    (("SN A,10,5,2458000,Ia,0.01,X",), HEADER, "not a plausible MJD"),
    (("SN A,10,5,58000,Ia,0.01,X", "SN_A,11,5,58000,Ia,0.01,Y"), HEADER, "safe_name is not unique"),
    (("SN A,10,5,58000,Ia,0.01,X", "SN A,11,5,58000,Ia,0.01,Y"), HEADER, "sn_name is not unique"),
    ((), HEADER, "no supernovae"),
])
def test_bad_catalogues_name_the_file_and_problem(tmp_path, rows, header, message):
    path = write(tmp_path, *rows, header=header)
    with pytest.raises(InputDataError) as error:
        load_catalog(path)
    assert error.value.path == path and message in error.value.problem


def test_missing_catalogue_and_unknown_supernova(tmp_path):
    with pytest.raises(InputDataError, match="not found"):
        load_catalog(tmp_path / "none.csv")
    with pytest.raises(InputDataError, match="'SN 2099zz' is not in the catalogue"):
        catalog_entry(load_catalog(CATALOG), "SN 2099zz", CATALOG)
