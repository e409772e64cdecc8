# Helper functions and path patterns shared by the rules. The only place for them.

import json
import shlex
import sys
from pathlib import Path

import pandas as pd

from snakemake.logging import logger

from astrodag.config import load_grid, lock_advice
from astrodag.errors import AstrodagError
from astrodag.microlensing.cadence import load_cadences
from astrodag.supernova.archive.catalog import load_catalog


def repo_path(path):
    """A config path as given if it exists from here, else relative to the repository."""
    candidate = Path(path)
    if candidate.is_absolute() or candidate.exists():
        return str(candidate)
    return str(Path(workflow.basedir) / candidate)


def schema_path(name):
    """The path of a table's schema in workflow/schemas."""
    return str(Path(workflow.basedir, "workflow", "schemas", name))


def checked_at_start(load, *args, **kwargs):
    """``load(*args, **kwargs)``: a bad table stops the run before any job, in one line naming the file."""
    try:
        return load(*args, **kwargs)
    except AstrodagError as error:
        raise WorkflowError(str(error)) from None


def load_flare_experiments(path):
    """The flare grid TSV (one experiment per row), checked (astrodag.config.load_grid)."""
    return checked_at_start(
        load_grid,
        path,
        schema_path("flare_experiments.schema.yaml"),
        "flare experiment grid",
        {"flare_class": str, "window_hours": int, "seed": int},
    )


def as_json(value):
    """Options passed to the CLI as one JSON argument (``{params.NAME:q}`` quotes it for the shell)."""
    return json.dumps(value, sort_keys=True)


def _files(named, key):
    """The file(s) of ``named`` (a rule's input or output) under a name or an index, as a list."""
    files = getattr(named, key) if isinstance(key, str) else named[key]
    return [files] if isinstance(files, str) else list(files)


def output_dir(key=0):
    """A params function: the directory of the rule's output ``key`` (a name or an index)."""

    def directory(wildcards, output):
        return str(Path(_files(output, key)[0]).parent)

    return directory


def input_dir(key=0):
    """A params function: the directory of the rule's input ``key`` (a name or an index)."""

    def directory(wildcards, input):
        return str(Path(_files(input, key)[0]).parent)

    return directory


def quoted_dirs(key, names=None, up=1):
    """A params function: the directories of every file of input ``key``, quoted for the shell.

    ``up`` levels above each file; with ``names`` (in the order of the files) each is given as
    ``NAME=DIR``. The result is space separated: several arguments, not one.
    """

    def directories(wildcards, input):
        dirs = [Path(path).parents[up - 1] for path in _files(input, key)]
        items = (
            dirs
            if names is None
            else [f"{name}={path}" for name, path in zip(names, dirs, strict=True)]
        )
        return " ".join(shlex.quote(str(item)) for item in items)

    return directories


# Snakemake checks its locks only after building the job graph: a second instance in this directory
# (or a rerun after a killed one) would first fail on files "incomplete" with misleading advice.
if workflow.is_main_process and "--unlock" not in sys.argv:
    advice = lock_advice()
    if advice:
        logger.warning(advice)

# Rules run `python -m astrodag`; the source tree goes first on the path so that the
# package is found in a conda env (--use-conda) as well as in an installed virtualenv.
# (shell.prefix is formatted like a rule's shell command, hence the doubled braces.)
shell.prefix(
    "export PYTHONPATH="
    + shlex.quote(str(Path(workflow.basedir, "src")))
    + "${{PYTHONPATH:+:$PYTHONPATH}}; "
)

# Each config writes into its own results and logs directories (config keys results_dir, logs_dir),
# so that a full-scale run never overwrites the demo's outputs.
RESULTS = config["results_dir"].rstrip("/")
LOGS = config["logs_dir"].rstrip("/")
BENCHMARKS = f"{RESULTS}/benchmarks"

FLARES = config["flares"]
FLARE_GRID = load_flare_experiments(repo_path(FLARES["experiments"]))
FLARE_MODELS = FLARES["models"]

# Output patterns, defined once.
FLARE_RAW = f"{RESULTS}/flares/raw"
FLARE_DATASET = f"{RESULTS}/flares/dataset"
FLARE_EXPERIMENT = (
    f"{RESULTS}/flares/experiments/{{flare_class}}_{{window}}h/seed{{seed}}/{{model}}"
)
FLARE_ANALYSIS = f"{RESULTS}/flares/analysis"
FLARE_LOGS = f"{LOGS}/flares"
FLARE_BENCHMARKS = f"{BENCHMARKS}/flares"


def flare_experiment_files(name, models=None):
    """``name`` in every experiment directory of the grid, for the given models."""
    return [
        f"{FLARE_EXPERIMENT}/{name}".format(
            flare_class=row.flare_class,
            window=row.window_hours,
            seed=row.seed,
            model=model,
        )
        for model in (models or FLARE_MODELS)
        for row in FLARE_GRID.itertuples()
    ]


def flare_input_tables(wildcards):
    """The keyword and event tables: simulated, or the user's files."""
    if FLARES["source"] == "synthetic":
        return {
            "keywords": f"{FLARE_RAW}/sharp_keywords.csv",
            "events": f"{FLARE_RAW}/flare_events.csv",
        }
    files = FLARES["files"]
    for key in ("keywords", "events"):
        if not files[key]:
            raise WorkflowError(
                f"config key 'flares.files.{key}' must name a file when flares.source is 'files'"
            )
    return {"keywords": files["keywords"], "events": files["events"]}


# ---- microlensing ---------------------------------------------------------------------


def load_cadences_table(path):
    """The cadence names of the cadence TSV (one cadence experiment per row), in file order.

    The schema checks each cell, the loader of the simulation the rows together (a season longer
    than its period, duplicate names).
    """
    checked_at_start(
        load_grid,
        path,
        schema_path("cadences.schema.yaml"),
        "cadence table",
        {"cadence": str, "description": str},
        unique=["cadence"],
    )
    return list(checked_at_start(load_cadences, path))


MICROLENSING = config["microlensing"]
CADENCES_TSV = repo_path(MICROLENSING["cadences"])
CADENCES = load_cadences_table(CADENCES_TSV)
ML_SHARDS = [f"{i:03d}" for i in range(MICROLENSING["simulation"]["shards"])]

ML_EVENTS = f"{RESULTS}/microlensing/events/shard{{shard}}"
ML_CADENCE = f"{RESULTS}/microlensing/cadences/{{cadence}}"
ML_OBSERVATIONS = f"{ML_CADENCE}/observations/shard{{shard}}"
# The files of an observation directory (astrodag.microlensing.observe.observe_shard).
ML_OBSERVATION_FILES = (
    "magnitudes.npy",
    "errors.npy",
    "scatter.npy",
    "counts.npy",
    "events.parquet",
    "summary.json",
)
ML_COMPARISON = f"{RESULTS}/microlensing/comparison"
ML_LOGS = f"{LOGS}/microlensing"
ML_BENCHMARKS = f"{BENCHMARKS}/microlensing"


def microlensing_observation_events(wildcards):
    """The events table of the cadence's observation directory of every shard, in shard order."""
    return expand(
        f"{ML_OBSERVATIONS}/events.parquet", cadence=wildcards.cadence, shard=ML_SHARDS
    )


def microlensing_observation_arrays(wildcards):
    """The other files of the cadence's observation directories (so that a change reruns training)."""
    return expand(
        f"{ML_OBSERVATIONS}/{{name}}",
        cadence=wildcards.cadence,
        shard=ML_SHARDS,
        name=[name for name in ML_OBSERVATION_FILES if name != "events.parquet"],
    )


# ---- supernova imaging --------------------------------------------------------------


def load_supernova_catalog(path):
    """SN names of the catalogue, keyed by the file-safe name that the jobs use (its checks are theirs)."""
    checked_at_start(
        load_grid,
        path,
        schema_path("supernovae.schema.yaml"),
        "supernova catalogue",
        {
            "sn_name": str,
            "type": str,
            "host": str,
            "ra": float,
            "dec": float,
            "discovery_mjd": float,
            "redshift": float,
        },
        unique=["sn_name"],
    )
    catalog = checked_at_start(load_catalog, path)
    return dict(zip(catalog["safe_name"], catalog["sn_name"]))


SUPERNOVA = config["supernova"]
SN_CATALOG = repo_path(SUPERNOVA["catalog"])
SN_NAMES = load_supernova_catalog(SN_CATALOG)

SN_ARCHIVE = f"{RESULTS}/supernova/archive"
SN_SYNTHETIC = f"{SN_ARCHIVE}/synthetic"
SN_PAIR = f"{RESULTS}/supernova/pairs/{{pair_id}}"
SN_TRIPLETS = f"{RESULTS}/supernova/triplets"
SN_LOGS = f"{LOGS}/supernova"
SN_BENCHMARKS = f"{BENCHMARKS}/supernova"
# MAST calls hold one unit of this resource; profiles cap it (resources: mast_connections=4).
SN_MAST_CALLS = 1 if SUPERNOVA["source"] == "mast" else 0
# Downloads are cached per results directory unless the config names a shared cache.
SN_CACHE = SUPERNOVA["download"]["cache_dir"] or f"{SN_ARCHIVE}/cache"


def supernova_backend():
    """Backend options of the query and download stages: the synthetic survey is a local archive."""
    source = SUPERNOVA["source"]
    if source == "synthetic":
        return f"--backend local --archive-dir {SN_SYNTHETIC}"
    if source == "local":
        if not SUPERNOVA["archive_dir"]:
            raise WorkflowError(
                "config key 'supernova.archive_dir' must name a directory when supernova.source is 'local'"
            )
        if not Path(SUPERNOVA["archive_dir"]).is_dir():
            raise WorkflowError(
                f"config key 'supernova.archive_dir': {SUPERNOVA['archive_dir']} is not a directory"
            )
        return f"--backend local --archive-dir {shlex.quote(SUPERNOVA['archive_dir'])}"
    return "--backend mast"


def supernova_archive_inputs(wildcards=None):
    """The synthetic survey's observation table when the demo survey is the archive."""
    if SUPERNOVA["source"] == "synthetic":
        return [f"{SN_SYNTHETIC}/observations.csv"]
    return []


def supernova_pair_ids(wildcards=None):
    """Accepted pairs, known only once the pairing checkpoint has run."""
    pairs = checkpoints.pair_observations.get().output.pairs
    return list(pd.read_csv(pairs, dtype={"pair_id": str})["pair_id"])


def supernova_pair_files(name):
    """An input function: ``name`` in every accepted pair's directory."""

    def files(wildcards):
        return [
            f"{SN_PAIR}/{name}".format(pair_id=pair) for pair in supernova_pair_ids()
        ]

    return files


def load_realbogus_experiments(path):
    """The real/bogus grid TSV (one classifier per row), checked, indexed by experiment name."""
    grid = checked_at_start(
        load_grid,
        path,
        schema_path("realbogus_experiments.schema.yaml"),
        "real/bogus experiment grid",
        {
            "experiment": str,
            "architecture": str,
            "seed": int,
            "train_missions": str,
            "test_missions": str,
            "description": str,
        },
        unique=["experiment"],
    )
    return grid.set_index("experiment", drop=False)


RB_GRID = load_realbogus_experiments(repo_path(SUPERNOVA["realbogus_experiments"]))
RB_EXPERIMENTS = list(RB_GRID["experiment"])
RB_DEPLOY = SUPERNOVA["deploy_experiment"]
if RB_DEPLOY not in RB_EXPERIMENTS:
    raise WorkflowError(
        f"config key 'supernova.deploy_experiment': {RB_DEPLOY!r} is not in"
        f" {SUPERNOVA['realbogus_experiments']} ({', '.join(RB_EXPERIMENTS)})"
    )
RB_EXPERIMENT = f"{RESULTS}/supernova/realbogus/{{experiment}}"
RB_DEPLOYED = RB_EXPERIMENT.format(experiment=RB_DEPLOY)
RB_REVIEW = f"{RESULTS}/supernova/review"


def realbogus_missions(wildcards):
    """--missions-train/--missions-test of a cross-mission experiment ('all': no option)."""
    row = RB_GRID.loc[wildcards.experiment]
    options = []
    for column, option in (
        ("train_missions", "--missions-train"),
        ("test_missions", "--missions-test"),
    ):
        if row[column] != "all":
            options.append(f"{option} {' '.join(row[column].split(','))}")
    return " ".join(options)


def reviewed_triplets(wildcards=None):
    """Triplets from reviewed labels (config supernova.reviewed_labels) join the next dataset."""
    return (
        [f"{RB_REVIEW}/ingested/ingested.json"] if SUPERNOVA["reviewed_labels"] else []
    )
