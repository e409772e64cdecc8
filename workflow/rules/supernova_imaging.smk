# Supernova differencing, one pair per job: alignment + ZOGY subtraction -> 5-sigma candidates ->
# (science, reference, difference) triplets; then the split triplet dataset and the track's summary.

from astrodag.config import settings_for
from astrodag.supernova.imaging.resources import difference_mem_mb


rule difference_pair:
    input:
        science=f"{SN_PAIR}/science.fits",
        reference=f"{SN_PAIR}/reference.fits",
    output:
        difference=f"{SN_PAIR}/difference.fits",
        significance=f"{SN_PAIR}/significance.fits",
        mask=f"{SN_PAIR}/mask.fits",
        injections=f"{SN_PAIR}/injections.csv",
        record=f"{SN_PAIR}/difference.json",
    log:
        f"{SN_LOGS}/difference_pair/{{pair_id}}.log",
    benchmark:
        f"{SN_BENCHMARKS}/difference_pair/{{pair_id}}.tsv"
    conda:
        "../../envs/supernova.yaml"
    threads: 1
    resources:
        # Scaled with the images' pixels (8192^2: about 4 GB); the configured value is the floor.
        mem_mb=lambda wildcards, input: difference_mem_mb(
            input.science, input.reference, SUPERNOVA["resources"]["difference_mem_mb"]
        ),
        runtime=SUPERNOVA["resources"]["difference_runtime"],
    params:
        out_dir=output_dir("record"),
        settings=lambda wildcards: as_json(
            settings_for(
                wildcards.pair_id,
                SUPERNOVA["difference"],
                SUPERNOVA["difference_by_pair"],
            )
        ),
        seed=SUPERNOVA["seed"],
    shell:
        "python -m astrodag supernova difference --science {input.science} --reference {input.reference}"
        " --out-dir {params.out_dir} --settings {params.settings:q} --seed {params.seed} --log {log}"


rule detect_candidates:
    input:
        rules.difference_pair.output,
    output:
        candidates=f"{SN_PAIR}/candidates.csv",
        summary=f"{SN_PAIR}/candidates.json",
    log:
        f"{SN_LOGS}/detect_candidates/{{pair_id}}.log",
    conda:
        "../../envs/supernova.yaml"
    resources:
        mem_mb=SUPERNOVA["resources"]["difference_mem_mb"],
        runtime=20,
    params:
        pair_dir=output_dir("candidates"),
        settings=as_json(SUPERNOVA["detection"]),
    shell:
        "python -m astrodag supernova detect --pair-dir {params.pair_dir}"
        " --settings {params.settings:q} --out {output.candidates} --log {log}"


rule cut_triplets:
    input:
        candidates=f"{SN_PAIR}/candidates.csv",
        images=rules.difference_pair.output,
        pairs=f"{SN_ARCHIVE}/pairs.csv",
        catalog=SN_CATALOG,
    output:
        f"{SN_PAIR}/triplets.npz",
    log:
        f"{SN_LOGS}/cut_triplets/{{pair_id}}.log",
    conda:
        "../../envs/supernova.yaml"
    resources:
        mem_mb=1000,
        runtime=20,
    params:
        pair_dir=output_dir(0),
        settings=as_json(SUPERNOVA["triplets"]),
        detection=as_json(SUPERNOVA["detection"]),
        seed=SUPERNOVA["seed"],
    shell:
        "python -m astrodag supernova triplets --pair-dir {params.pair_dir} --pairs {input.pairs}"
        " --pair-id {wildcards.pair_id} --catalog {input.catalog} --settings {params.settings:q}"
        " --detection-settings {params.detection:q} --seed {params.seed} --out {output} --log {log}"


rule build_triplet_dataset:
    input:
        triplets=supernova_pair_files("triplets.npz"),
        # Fields: pairs sharing an observation (pairs.csv) or sky (each frame's WCS) split together.
        frames=supernova_pair_files("difference.fits"),
        pairs=f"{SN_ARCHIVE}/pairs.csv",
        reviewed=reviewed_triplets,
    output:
        splits=expand(
            f"{SN_TRIPLETS}/{{split}}.npy", split=("train", "validation", "test")
        ),
        index=f"{SN_TRIPLETS}/index.parquet",
        summary=f"{SN_TRIPLETS}/summary.json",
        previews=directory(f"{SN_TRIPLETS}/previews"),
    log:
        f"{SN_LOGS}/build_triplet_dataset.log",
    benchmark:
        f"{SN_BENCHMARKS}/build_triplet_dataset.tsv"
    conda:
        "../../envs/supernova.yaml"
    resources:
        mem_mb=2000,
        runtime=30,
    params:
        out_dir=output_dir("index"),
        settings=as_json(SUPERNOVA["dataset"]),
        seed=SUPERNOVA["seed"],
        # Reviewed candidates (active learning) join as the per-pair triplet files of their directory.
        reviewed=lambda wildcards, input: (
            shlex.quote(str(Path(input.reviewed[0]).parent)) if input.reviewed else ""
        ),
    shell:
        "python -m astrodag supernova build-dataset --triplets {input.triplets} {params.reviewed}"
        " --pairs {input.pairs} --out-dir {params.out_dir} --settings {params.settings:q} --seed {params.seed}"
        " --log {log}"


rule summarize_imaging:
    input:
        pairs=f"{SN_ARCHIVE}/pairs.csv",
        decisions=f"{SN_ARCHIVE}/decisions.csv",
        yield_summary=f"{SN_ARCHIVE}/yield.csv",
        catalog=SN_CATALOG,
        records=supernova_pair_files("difference.json"),
        candidates=supernova_pair_files("candidates.csv"),
        detections=supernova_pair_files("candidates.json"),
        dataset=f"{SN_TRIPLETS}/summary.json",
        truth=(
            [f"{SN_SYNTHETIC}/truth.csv"] if SUPERNOVA["source"] == "synthetic" else []
        ),
    output:
        report=report(
            f"{RESULTS}/supernova/imaging_report.md",
            caption="../report/supernova_imaging.rst",
            category="Supernova",
        ),
        json=f"{RESULTS}/supernova/imaging_report.json",
        per_pair=report(
            f"{RESULTS}/supernova/pairs_summary.csv",
            caption="../report/supernova_pairs.rst",
            category="Supernova",
        ),
    log:
        f"{SN_LOGS}/summarize_imaging.log",
    conda:
        "../../envs/supernova.yaml"
    params:
        truth=lambda wildcards, input: f"--truth {input.truth}" if input.truth else "",
        pair_dirs=quoted_dirs("records"),
        out_dir=output_dir("report"),
    shell:
        "python -m astrodag supernova report --pairs {input.pairs} --decisions {input.decisions}"
        " --yield-summary {input.yield_summary} --catalog {input.catalog} --pair-dirs {params.pair_dirs}"
        " --dataset-summary {input.dataset} {params.truth} --out-dir {params.out_dir} --log {log}"


rule supernova_imaging:
    default_target: False
    input:
        rules.summarize_imaging.output,
