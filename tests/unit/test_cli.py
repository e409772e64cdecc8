"""The ``astrodag`` command line: one subcommand per track, every stage's help, the shared option
helpers, and the import rules that keep the tracks apart."""

import argparse
import ast
import subprocess
import sys
from pathlib import Path

import pytest

from astrodag.cli import build_parser, main
from astrodag.cli_support import json_or_yaml, named_dirs, resolve_defaults, sidecar_path, split_fractions
from astrodag.errors import ConfigError

PACKAGE = Path(__file__).resolve().parents[2] / "src" / "astrodag"
TRACKS = ("flares", "microlensing", "supernova")
# What a track may import besides itself: the shared core.
CORE = {"cli_support", "errors", "evaluation", "io", "logs", "models", "reporting", "settings", "simulation",
        "training"}


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    (action,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return action.choices


def _stages():
    return [(track, stage) for track, parser in _subparsers(build_parser()).items()
            for stage in _subparsers(parser)]


def test_help_shows_one_subcommand_per_track():
    result = subprocess.run([sys.executable, "-m", "astrodag", "--help"], capture_output=True, text=True, check=True)
    listed = [line.split()[0] for line in result.stdout.split("positional arguments:")[1].splitlines()[2:]
              if line.startswith("    ") and not line.startswith("     ")]
    assert listed == [*TRACKS, "config"]
    assert tuple(_subparsers(build_parser())) == (*TRACKS, "config")


@pytest.mark.parametrize(("track", "stage"), _stages(), ids="-".join)
def test_every_stage_has_help_and_the_common_options(track, stage, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([track, stage, "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert text.startswith(f"usage: astrodag {track} {stage}")
    for option in ("--log", "--verbose", "--progress"):
        assert option in text


def test_one_spelling_per_option():
    for track, stage in _stages():
        parser = _subparsers(_subparsers(build_parser())[track])[stage]
        options = {string: action for action in parser._actions for string in action.option_strings}
        assert "--output-dir" not in options, (track, stage)
        if "--model" in options:  # always the path of model.pt, never an architecture name
            assert options["--model"].type is Path and options["--model"].choices is None, (track, stage)


def test_shared_verbs():
    stages = {track: set(_subparsers(parser)) for track, parser in _subparsers(build_parser()).items()}
    assert {"simulate", "train", "compare"} <= stages["flares"] & stages["microlensing"] & stages["supernova"]
    assert "build-dataset" in stages["flares"] & stages["supernova"]
    assert "serve" in stages["supernova"]


def test_parser_imports_no_numerical_module():
    code = ("import sys; from astrodag.cli import build_parser; build_parser(); "
            "print(sorted(m for m in ('numpy', 'pandas', 'torch', 'fastapi') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_bad_input_is_one_line_and_status_2(tmp_path, caplog):
    status = main(["microlensing", "compare", "--cadence-dirs", "dense", "--out-dir", str(tmp_path)])
    assert status == 2
    errors = [record for record in caplog.records if record.levelname == "ERROR"]
    assert len(errors) == 1
    assert errors[0].getMessage() == ("astrodag microlensing compare: config key 'cadence-dirs': "
                                      "expected NAME=DIR, got 'dense'")


def _imports(path: Path) -> set[str]:
    """Every ``astrodag.*`` module a source file imports (at any depth in the file)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return {name for name in names if name.split(".")[0] == "astrodag"}


def test_no_module_imports_the_cli():
    offenders = {}
    for path in PACKAGE.rglob("*.py"):
        names = sorted(name for name in _imports(path) if name == "astrodag.cli" or name.startswith("astrodag.cli."))
        if names and path.name != "__main__.py":  # ``python -m astrodag`` runs it
            offenders[str(path.relative_to(PACKAGE))] = names
    assert offenders == {}


@pytest.mark.parametrize("track", TRACKS)
def test_a_track_imports_only_itself_and_the_core(track):
    offenders = {}
    for path in (PACKAGE / track).rglob("*.py"):
        outside = sorted(name for name in _imports(path)
                         if len(name.split(".")) > 1 and name.split(".")[1] not in CORE | {track, "__version__"})
        if outside:
            offenders[str(path.relative_to(PACKAGE))] = outside
    assert offenders == {}


def test_the_core_imports_no_track():
    # config.py is the one place that lists every track's settings classes, for the workflow's start.
    offenders = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE).parts
        if parts[0] in TRACKS or path.name in ("cli.py", "config.py", "__main__.py"):
            continue
        inside = sorted(name for name in _imports(path) if len(name.split(".")) > 1 and name.split(".")[1] in TRACKS)
        if inside:
            offenders[str(path.relative_to(PACKAGE))] = inside
    assert offenders == {}


def test_json_or_yaml(tmp_path):
    assert json_or_yaml('{"embed_dim": 64}') == {"embed_dim": 64}
    assert json_or_yaml("{tss: 0.4, f1: 0.2}") == {"tss": 0.4, "f1": 0.2}
    assert json_or_yaml("") == {}
    options = tmp_path / "options.yaml"
    options.write_text("dropout: 0.1\nname: it's\n")
    assert json_or_yaml(f"@{options}") == {"dropout": 0.1, "name": "it's"}
    with pytest.raises(argparse.ArgumentTypeError, match="does not exist"):
        json_or_yaml(f"@{tmp_path / 'none.yaml'}")
    with pytest.raises(argparse.ArgumentTypeError, match="must be a mapping"):
        json_or_yaml("[1, 2]")
    with pytest.raises(argparse.ArgumentTypeError, match="cannot parse"):
        json_or_yaml("{a: [1,")


def test_split_fractions_and_named_dirs():
    assert split_fractions(["train=0.6", "validation=0.2", "test=0.2"]) == {"train": 0.6, "validation": 0.2,
                                                                             "test": 0.2}
    with pytest.raises(ConfigError, match="split-fractions"):
        split_fractions(["training=0.6"])
    with pytest.raises(ConfigError, match="split-fractions"):
        split_fractions(["train="])
    assert named_dirs(["dense=a/b", "lsst=c=d"], "cadence-dirs") == {"dense": Path("a/b"), "lsst": Path("c=d")}
    with pytest.raises(ConfigError, match="'experiments'.*NAME=DIR"):
        named_dirs(["=a"], "experiments")


def test_sidecar_path():
    assert sidecar_path(argparse.Namespace(model=Path("m/model.pt"), model_json=None)) == Path("m/model.json")
    assert sidecar_path(argparse.Namespace(model=Path("m/model.pt"), model_json=Path("x.json"))) == Path("x.json")


def test_option_defaults_come_from_the_settings_classes():
    from astrodag.flares.settings import FlareDatasetSettings, SweepSettings
    from astrodag.microlensing.analysis import MicrolensingAnalysisSettings
    from astrodag.microlensing.simulation import TimeGridSettings
    from astrodag.supernova.archive.backends import QuerySettings

    parser = build_parser()
    dataset = resolve_defaults(parser.parse_args(["flares", "build-dataset", "--keywords", "k", "--events", "e",
                                                  "--features", "f", "--index", "i", "--summary", "s"]))
    expected = FlareDatasetSettings()
    assert (dataset.stride, dataset.window_steps, dataset.split_seed) == (expected.stride, expected.window_steps,
                                                                          expected.split_seed)
    assert split_fractions(dataset.split_fractions) == expected.split_fractions
    sweep = resolve_defaults(parser.parse_args(["flares", "sweep", "--predictions", "p", "--model-json", "m",
                                                "--out-dir", "o"]))
    assert (sweep.start, sweep.stop, sweep.num) == (SweepSettings().start, SweepSettings().stop, SweepSettings().num)
    observe = resolve_defaults(parser.parse_args(["microlensing", "observe", "--events", "e", "--cadences", "c",
                                                  "--cadence", "lsst", "--out-dir", "o"]))
    assert (observe.epochs, observe.duration_days) == (TimeGridSettings().epochs, TimeGridSettings().duration_days)
    evaluate = resolve_defaults(parser.parse_args(["microlensing", "evaluate", "--evaluation-dir", "e",
                                                   "--out-dir", "o", "--cadence", "lsst"]))
    assert tuple(evaluate.thresholds) == MicrolensingAnalysisSettings().detection_thresholds
    query_args = ["supernova", "query", "--catalog", "c", "--sn", "x", "--out", "o", "--backend", "mast"]
    query = resolve_defaults(parser.parse_args(query_args))
    assert query.radius_arcmin == QuerySettings().radius_arcmin == 5.0
    # Given on the command line, a value wins.
    assert resolve_defaults(parser.parse_args([*query_args, "--radius-arcmin", "2"])).radius_arcmin == 2.0


def test_help_shows_the_settings_default(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["flares", "build-dataset", "--help"])
    assert "steps between consecutive window ends (default: 1)" in " ".join(capsys.readouterr().out.split())
