# astrodag: one workflow from raw archive data to classifiers, tables and figures.
# Run `snakemake --dry-run` to see the plan, `snakemake --cores 2` for the demo.

import os
import re
import sys

from snakemake.utils import min_version

min_version("9.0")


# The demo config ships beside this Snakefile; --configfile FILE overrides any of its keys.
configfile: os.path.join(workflow.basedir, "config", "config.yaml")


# The package checks the config (found on the path below): nested --config values get their YAML
# types, then the schema checks the structure and each settings class its section, each failure
# one line naming the key.
sys.path.insert(0, os.path.join(workflow.basedir, "src"))
import astrodag.config
from astrodag.errors import ConfigError

try:
    astrodag.config.retype_overrides(config, workflow.config_settings.config)
    astrodag.config.validate_structure(
        config,
        os.path.join(workflow.basedir, "workflow", "schemas", "config.schema.yaml"),
    )
    astrodag.config.validate_config(config)
except ConfigError as error:
    # One line: the key and the problem, without a traceback.
    raise WorkflowError(str(error)) from None


include: "workflow/rules/common.smk"
include: "workflow/rules/flares.smk"
include: "workflow/rules/microlensing.smk"
include: "workflow/rules/supernova_archive.smk"
include: "workflow/rules/supernova_imaging.smk"
include: "workflow/rules/supernova_realbogus.smk"


wildcard_constraints:
    flare_class="C|M5|M",
    window=r"\d+",
    seed=r"\d+",
    model="|".join(FLARE_MODELS),
    cadence="|".join(CADENCES),
    shard=r"\d{3}",
    sn="|".join(re.escape(name) for name in SN_NAMES),
    pair_id=r"[A-Za-z0-9_.-]+",
    experiment="|".join(re.escape(name) for name in RB_EXPERIMENTS),


report: "workflow/report/workflow.rst"


rule all:
    default_target: True
    input:
        # Each track's target rule (snakemake flares | microlensing | supernova).
        rules.flares.input,
        rules.microlensing.input,
        rules.supernova.input,
