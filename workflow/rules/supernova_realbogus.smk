# Real/bogus classification of the difference-image candidates: one classifier per row of the
# grid (architectures x seeds, cross-mission) -> test-split evaluation -> comparison report with the
# end-to-end SN recovery; the deployed model scores every pair's candidates, the most uncertain of
# those fill a review queue for active learning, and the model is exported to ONNX.


rule train_realbogus:
    input:
        splits=rules.build_triplet_dataset.output.splits,
        index=rules.build_triplet_dataset.output.index,
    output:
        weights=f"{RB_EXPERIMENT}/model/model.pt",
        sidecar=f"{RB_EXPERIMENT}/model/model.json",
        history=f"{RB_EXPERIMENT}/model/history.csv",
    log:
        f"{SN_LOGS}/train_realbogus/{{experiment}}.log",
    benchmark:
        f"{SN_BENCHMARKS}/train_realbogus/{{experiment}}.tsv"
    conda:
        "../../envs/supernova.yaml"
    threads: SUPERNOVA["resources"]["train_threads"]
    resources:
        mem_mb=SUPERNOVA["resources"]["train_mem_mb"],
        runtime=SUPERNOVA["resources"]["train_runtime"],
        gpu=SUPERNOVA["resources"]["train_gpus"],
    params:
        triplets_dir=input_dir("index"),
        out_dir=output_dir("weights"),
        architecture=lambda wildcards: RB_GRID.loc[wildcards.experiment, "architecture"],
        seed=lambda wildcards: int(RB_GRID.loc[wildcards.experiment, "seed"]),
        missions=realbogus_missions,
        settings=as_json(SUPERNOVA["realbogus"]),
    shell:
        "python -m astrodag supernova train --triplets-dir {params.triplets_dir} --out-dir {params.out_dir}"
        " --architecture {params.architecture} --seed {params.seed} {params.missions}"
        " --settings {params.settings:q} --threads {threads} --log {log}"


rule evaluate_realbogus:
    input:
        rules.train_realbogus.output,
        splits=rules.build_triplet_dataset.output.splits,
        index=rules.build_triplet_dataset.output.index,
    output:
        metrics=f"{RB_EXPERIMENT}/evaluation/metrics.json",
        predictions=f"{RB_EXPERIMENT}/evaluation/predictions.parquet",
        thresholds=f"{RB_EXPERIMENT}/evaluation/thresholds.csv",
        figures=report(
            multiext(
                f"{RB_EXPERIMENT}/evaluation/",
                "pr.png",
                "roc.png",
                "reliability.png",
                "confusion_matrix.png",
            ),
            caption="../report/realbogus_figures.rst",
            category="Real/bogus",
            subcategory="{experiment}",
        ),
    log:
        f"{SN_LOGS}/evaluate_realbogus/{{experiment}}.log",
    conda:
        "../../envs/supernova.yaml"
    threads: SUPERNOVA["resources"]["train_threads"]
    resources:
        mem_mb=2000,
        runtime=20,
    params:
        model_dir=input_dir(0),
        triplets_dir=input_dir("index"),
        out_dir=output_dir("metrics"),
        settings=as_json(SUPERNOVA["realbogus"]),
    shell:
        "python -m astrodag supernova evaluate --model-dir {params.model_dir}"
        " --triplets-dir {params.triplets_dir} --out-dir {params.out_dir}"
        " --settings {params.settings:q} --threads {threads} --log {log}"


rule score_candidates:
    input:
        weights=f"{RB_DEPLOYED}/model/model.pt",
        sidecar=f"{RB_DEPLOYED}/model/model.json",
        candidates=supernova_pair_files("candidates.csv"),
    output:
        table=f"{RESULTS}/supernova/scored/candidates.parquet",
        summary=f"{RESULTS}/supernova/scored/candidates.json",
        stamps=directory(f"{RESULTS}/supernova/scored/stamps"),
    log:
        f"{SN_LOGS}/score_candidates.log",
    benchmark:
        f"{SN_BENCHMARKS}/score_candidates.tsv"
    conda:
        "../../envs/supernova.yaml"
    threads: SUPERNOVA["resources"]["train_threads"]
    resources:
        mem_mb=2000,
        runtime=60,
    params:
        pair_dirs=quoted_dirs("candidates"),
        settings=as_json(SUPERNOVA["scoring"]),
    shell:
        "python -m astrodag supernova score --model {input.weights} --model-json {input.sidecar}"
        " --pair-dirs {params.pair_dirs} --out {output.table} --stamps-dir {output.stamps}"
        " --settings {params.settings:q} --threads {threads} --log {log}"


# The queue comes from the newly scored candidates (not from the labelled test split): only the
# queued candidates are cut again from their pairs' images, as the scorer cut them.
rule review_queue:
    input:
        scored=rules.score_candidates.output.table,
        sidecar=f"{RB_DEPLOYED}/model/model.json",
        pairs=f"{SN_ARCHIVE}/pairs.csv",
        candidates=supernova_pair_files("candidates.csv"),
    output:
        queue=f"{RB_REVIEW}/review_queue.csv",
        triplets=f"{RB_REVIEW}/review_triplets.npz",
        stamps=directory(f"{RB_REVIEW}/stamps"),
    log:
        f"{SN_LOGS}/review_queue.log",
    conda:
        "../../envs/supernova.yaml"
    resources:
        mem_mb=2000,
        runtime=30,
    params:
        pair_dirs=quoted_dirs("candidates"),
        out_dir=output_dir("queue"),
        queue_size=SUPERNOVA["review"]["count"],
    shell:
        "python -m astrodag supernova review --scored {input.scored} --pair-dirs {params.pair_dirs}"
        " --model-json {input.sidecar} --pairs {input.pairs} --out-dir {params.out_dir}"
        " --count {params.queue_size} --log {log}"


rule ingest_reviews:
    input:
        reviews=SUPERNOVA["reviewed_labels"] or f"{RB_REVIEW}/review_queue.csv",
    output:
        record=f"{RB_REVIEW}/ingested/ingested.json",
    log:
        f"{SN_LOGS}/ingest_reviews.log",
    conda:
        "../../envs/supernova.yaml"
    params:
        out_dir=output_dir("record"),
        triplets=lambda wildcards, input: Path(input.reviews).with_name(
            "review_triplets.npz"
        ),
    shell:
        "python -m astrodag supernova ingest-reviews --reviews {input.reviews} --triplets {params.triplets}"
        " --out-dir {params.out_dir} --log {log}"


rule export_realbogus_onnx:
    input:
        weights=f"{RB_DEPLOYED}/model/model.pt",
        sidecar=f"{RB_DEPLOYED}/model/model.json",
    output:
        f"{RB_DEPLOYED}/model/model.onnx",
    log:
        f"{SN_LOGS}/export_realbogus_onnx.log",
    conda:
        "../../envs/supernova.yaml"
    shell:
        "python -m astrodag supernova export-onnx --model {input.weights} --model-json {input.sidecar}"
        " --out {output} --log {log}"


rule compare_realbogus:
    input:
        metrics=expand(
            f"{RB_EXPERIMENT}/evaluation/metrics.json", experiment=RB_EXPERIMENTS
        ),
        predictions=f"{RB_DEPLOYED}/evaluation/predictions.parquet",
        scored=rules.score_candidates.output.table,
        pairs_summary=rules.summarize_imaging.output.per_pair,
        index=rules.build_triplet_dataset.output.index,
        catalog=SN_CATALOG,
    output:
        report=report(
            f"{RESULTS}/supernova/realbogus/report.md",
            caption="../report/realbogus_report.rst",
            category="Real/bogus",
        ),
        json=f"{RESULTS}/supernova/realbogus/report.json",
        summary=f"{RESULTS}/supernova/realbogus/summary.csv",
        recovery=f"{RESULTS}/supernova/realbogus/sn_recovery.csv",
    log:
        f"{SN_LOGS}/compare_realbogus.log",
    conda:
        "../../envs/supernova.yaml"
    params:
        experiments=quoted_dirs("metrics", names=RB_EXPERIMENTS, up=2),
        out_dir=output_dir("report"),
        deployed=RB_DEPLOY,
    shell:
        "python -m astrodag supernova compare --experiments {params.experiments} --deployed {params.deployed}"
        " --scored {input.scored} --pairs-summary {input.pairs_summary} --index {input.index}"
        " --catalog {input.catalog} --out-dir {params.out_dir} --log {log}"


rule supernova:
    default_target: False
    input:
        rules.summarize_imaging.output,
        # The weights too (see rule flares): a model.pt lost with a killed job is retrained.
        expand(f"{RB_EXPERIMENT}/model/model.pt", experiment=RB_EXPERIMENTS),
        rules.compare_realbogus.output,
        rules.review_queue.output,
        rules.export_realbogus_onnx.output,
