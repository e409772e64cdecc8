"""Every settings section of a workflow config is checked by its class at workflow start."""

import copy
from pathlib import Path

import pytest
import yaml

from astrodag.config import retype_overrides, sections, settings_for, validate_config, validate_structure
from astrodag.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]


def load(name):
    return yaml.safe_load((REPO / name).read_text())


def merged(base, override):
    """Snakemake's merge of a --configfile over the default config file."""
    result = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(result.get(key), dict):
            result[key] = merged(result[key], value)
        else:
            result[key] = value
    return result


@pytest.mark.parametrize("name", ["config/config.yaml", "config/full.yaml", "tests/data/config_tiny.yaml"])
def test_shipped_configs_validate_and_keep_their_values(name):
    config = merged(load("config/config.yaml"), load(name))
    checked = validate_config(copy.deepcopy(config))
    assert checked["flares"]["training"]["max_epochs"] == config["flares"]["training"]["max_epochs"]
    assert checked["microlensing"]["simulation"]["shards"] == config["microlensing"]["simulation"]["shards"]
    # Checked and filled sections validate again to the same values.
    assert validate_config(copy.deepcopy(checked)) == checked


def test_omitted_sections_get_their_class_defaults():
    checked = validate_config({"flares": {}, "microlensing": {}, "supernova": {}})
    for dotted, cls in sections().items():
        track, name = dotted.split(".")
        assert checked[track][name] == cls().as_dict()
    assert checked["flares"]["dataset"]["stride"] == 1 and checked["microlensing"]["training"]["monitor"] == "loss"


@pytest.mark.parametrize("dotted", sorted(sections()))
def test_every_settings_class_accepts_its_own_defaults(dotted):
    cls = sections()[dotted]
    assert cls.from_config({}, dotted) == cls() == cls.from_config(cls().as_dict(), dotted)


@pytest.mark.parametrize("section, typo, nearest", [
    ("flares.dataset", "strde", "stride"),
    ("flares.everest", "embed_dims", "embed_dim"),
    ("flares.training", "learnig_rate", "learning_rate"),
    ("flares.baseline", "inverse_regularisation", "inverse_regularization"),
    ("flares.sweep", "strat", "start"),
    ("flares.analysis", "confidense", "confidence"),
    ("microlensing.simulation", "split_fraction", "split_fractions"),
    ("microlensing.model", "chanels", "channels"),
    ("microlensing.training", "max_epoch", "max_epochs"),
    ("supernova.survey", "mission", "missions"),
    ("supernova.archive", "min_calib_lvl", "min_calib_level"),
    ("supernova.pairing", "overlap_treshold", "overlap_threshold"),
    ("supernova.difference", "injct", "inject"),
    ("supernova.detection", "treshold", "threshold"),
    ("supernova.triplets", "sise", "size"),
    ("supernova.dataset", "previewz", "previews"),
    ("supernova.realbogus", "class_balanse", "class_balance"),
    ("supernova.scoring", "batchsize", "batch_size"),
])
def test_a_typo_in_any_section_names_the_dotted_key_and_the_nearest_key(section, typo, nearest):
    track, name = section.split(".")
    config = {track: {name: {typo: 1}}}
    with pytest.raises(ConfigError) as error:
        validate_config(config)
    assert error.value.key == f"{section}.{typo}"
    assert f"did you mean '{nearest}'?" in str(error.value)


def test_nested_typos_and_bad_values_name_the_full_key():
    with pytest.raises(ConfigError, match=r"'microlensing.simulation.priors.u_0': unknown key; did you mean 'u0'"):
        validate_config({"microlensing": {"simulation": {"priors": {"u_0": [0, 1]}}}})
    with pytest.raises(ConfigError, match=r"'supernova.difference.align.methd': unknown key; did you mean 'method'"):
        validate_config({"supernova": {"difference": {"align": {"methd": "interp"}}}})
    with pytest.raises(ConfigError, match=r"'supernova.realbogus.braai.max_epochs'"):
        validate_config({"supernova": {"realbogus": {"braai": {"max_epochs": 0}}}})
    with pytest.raises(ConfigError, match=r"'flares.training.monitor'"):
        validate_config({"flares": {"training": {"monitor": "accuracy"}}})
    with pytest.raises(ConfigError, match=r"'flares.dataset': must be a mapping"):
        validate_config({"flares": {"dataset": [1, 2]}})


def test_per_pair_difference_settings_merge_over_the_section_in_order():
    overrides = [{"match": "*__HST_*", "settings": {"subtract": {"method": "kernel"}}},
                 {"match": "SN_2011fe__*", "settings": {"subtract": {"tile_size": 1024}, "inject": {"count": 0}}}]
    checked = validate_config({"supernova": {"difference": {"inject": {"count": 34}},
                                             "difference_by_pair": overrides}})
    base, entries = checked["supernova"]["difference"], checked["supernova"]["difference_by_pair"]
    hst = settings_for("SN_2011fe__HST_ACS_F814W__1_2", base, entries)
    assert hst["subtract"]["method"] == "kernel" and hst["subtract"]["tile_size"] == 1024
    assert hst["inject"]["count"] == 0 and hst["subtract"]["workers"] == base["subtract"]["workers"]
    other = settings_for("SN_2020oi__SWIFT_UVOT_U__3_4", base, entries)
    assert other == base and other["inject"]["count"] == 34
    assert base["subtract"]["method"] == "zogy"  # the section itself is untouched


@pytest.mark.parametrize("entries, message", [
    ([{"match": "*", "settings": {"subtract": {"methd": "kernel"}}}],
     r"'supernova.difference_by_pair\[0\].settings.subtract.methd': unknown key; did you mean 'method'"),
    ([{"match": "*", "settings": {"subtract": {"method": "hotpants"}}}],
     r"'supernova.difference_by_pair\[0\].settings.subtract.method'"),
    ([{"pattern": "*", "settings": {}}], r"'supernova.difference_by_pair\[0\]': must be a mapping with exactly"),
    ({"match": "*"}, r"'supernova.difference_by_pair': must be a list"),
])
def test_per_pair_overrides_are_checked_at_start(entries, message):
    with pytest.raises(ConfigError, match=message):
        validate_config({"supernova": {"difference_by_pair": entries}})


def test_the_simulation_section_keeps_the_workflow_keys():
    simulation = {"shards": 4, "seed": 9, "priors": {"tE_median_days": 25}}
    checked = validate_config({"microlensing": {"simulation": simulation}})
    simulation = checked["microlensing"]["simulation"]
    assert simulation["shards"] == 4 and simulation["seed"] == 9 and simulation["priors"]["tE_median_days"] == 25.0


def test_the_observation_section_is_checked():
    checked = validate_config({"microlensing": {"observation": {"delta_chi2_threshold": 100}}})
    assert checked["microlensing"]["observation"]["delta_chi2_threshold"] == 100.0
    with pytest.raises(ConfigError, match=r"'microlensing.observation.delta_chi2': unknown key"):
        validate_config({"microlensing": {"observation": {"delta_chi2": 100}}})


SCHEMA = REPO / "workflow" / "schemas" / "config.schema.yaml"


def test_nested_command_line_values_get_their_yaml_types():
    """Snakemake's --config keeps nested scalars as strings ('1000'); they become numbers again."""
    from snakemake.cli import parse_config

    overrides = parse_config(['flares={"synthetic": {"regions": 1000}, "models": ["baseline"]}',
                              'supernova={"source": "mast", "dataset": {"bogus_per_real": null}}',
                              'microlensing={"training": {"mixed_precision": false, "learning_rate": 3e-4}}'])
    assert overrides["flares"]["synthetic"]["regions"] == "1000"  # what Snakemake gives
    config = merged(load("config/config.yaml"), overrides)
    retype_overrides(config, overrides)
    assert config["flares"]["synthetic"] == {"regions": 1000, "seed": 2011}
    assert config["flares"]["models"] == ["baseline"]
    assert config["supernova"]["source"] == "mast" and config["supernova"]["dataset"]["bogus_per_real"] is None
    assert config["microlensing"]["training"]["mixed_precision"] is False
    assert config["microlensing"]["training"]["learning_rate"] == 3e-4
    # Values not given on the command line are left alone, dates and words stay strings.
    config = {"a": {"b": "2020-01-01", "c": "abc", "d": "7"}}
    retype_overrides(config, {"a": {"b": "2020-01-01", "c": "abc"}})
    assert config == {"a": {"b": "2020-01-01", "c": "abc", "d": "7"}}


def test_structure_check_fills_defaults_and_names_a_typo_in_one_line():
    config = merged(load("config/config.yaml"), {"flares": {"synthtic": {"regions": 10}}})
    with pytest.raises(ConfigError) as error:
        validate_structure(config, SCHEMA)
    assert error.value.key == "flares.synthtic"
    assert "did you mean 'synthetic'?" in str(error.value) and "\n" not in str(error.value)
    with pytest.raises(ConfigError, match=r"'flares.synthetic.regions': must be of type integer, got the string"):
        validate_structure(merged(load("config/config.yaml"), {"flares": {"synthetic": {"regions": "x"}}}), SCHEMA)
    filled = validate_structure({}, SCHEMA)
    assert filled["results_dir"] == "results" and filled["flares"]["synthetic"]["regions"] == 300
    assert filled["supernova"]["download"]["cache_dir"] == ""


def test_structure_check_accepts_every_shipped_config():
    for name in ("config/config.yaml", "config/full.yaml", "tests/data/config_tiny.yaml"):
        config = validate_structure(merged(load("config/config.yaml"), load(name)), SCHEMA)
        assert config["results_dir"] == ("results-full" if name.endswith("full.yaml") else "results")
