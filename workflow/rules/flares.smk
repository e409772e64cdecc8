# Solar flare prediction (EVEREST-style): data -> windows -> 45 experiments -> sweeps -> analysis.


rule simulate_flare_data:
    output:
        keywords=f"{FLARE_RAW}/sharp_keywords.csv",
        events=f"{FLARE_RAW}/flare_events.csv",
        summary=f"{FLARE_RAW}/simulation_summary.json",
    log:
        f"{FLARE_LOGS}/simulate_flare_data.log",
    benchmark:
        f"{FLARE_BENCHMARKS}/simulate_flare_data.tsv"
    conda:
        "../../envs/flares.yaml"
    params:
        regions=FLARES["synthetic"]["regions"],
        cadence=FLARES["dataset"]["cadence_minutes"],
        seed=FLARES["synthetic"]["seed"],
    shell:
        "python -m astrodag flares simulate --keywords {output.keywords} --events {output.events}"
        " --summary {output.summary} --regions {params.regions}"
        " --cadence-minutes {params.cadence} --seed {params.seed} --log {log}"


rule prepare_flare_dataset:
    input:
        unpack(flare_input_tables),
    output:
        features=f"{FLARE_DATASET}/features.npy",
        index=f"{FLARE_DATASET}/windows.parquet",
        summary=f"{FLARE_DATASET}/summary.json",
    log:
        f"{FLARE_LOGS}/prepare_flare_dataset.log",
    benchmark:
        f"{FLARE_BENCHMARKS}/prepare_flare_dataset.tsv"
    conda:
        "../../envs/flares.yaml"
    resources:
        mem_mb=4000,
        runtime=30,
    params:
        window_steps=FLARES["dataset"]["window_steps"],
        cadence=FLARES["dataset"]["cadence_minutes"],
        stride=FLARES["dataset"]["stride"],
        horizons=" ".join(str(h) for h in sorted(FLARE_GRID["window_hours"].unique())),
        classes=" ".join(sorted(FLARE_GRID["flare_class"].unique())),
        fractions=" ".join(
            f"{name}={value}"
            for name, value in FLARES["dataset"]["split_fractions"].items()
        ),
        split_seed=FLARES["dataset"]["split_seed"],
        split_method=FLARES["dataset"]["split_method"],
        tolerance=FLARES["dataset"]["resample_tolerance_minutes"],
        max_longitude=FLARES["dataset"]["max_longitude"] or "none",
        horizon_flag=(
            "--drop-unobserved-horizon"
            if FLARES["dataset"]["drop_unobserved_horizon"]
            else "--no-drop-unobserved-horizon"
        ),
        seeds=" ".join(str(s) for s in sorted(FLARE_GRID["seed"].unique())),
    shell:
        "python -m astrodag flares build-dataset --keywords {input.keywords} --events {input.events}"
        " --features {output.features} --index {output.index} --summary {output.summary}"
        " --window-steps {params.window_steps} --cadence-minutes {params.cadence}"
        " --stride {params.stride} --horizons {params.horizons} --classes {params.classes}"
        " --split-fractions {params.fractions} --split-seed {params.split_seed}"
        " --split-method {params.split_method} --tolerance-minutes {params.tolerance}"
        " --max-longitude {params.max_longitude} {params.horizon_flag} --seeds {params.seeds}"
        " --log {log}"


rule train_flare_model:
    input:
        features=rules.prepare_flare_dataset.output.features,
        index=rules.prepare_flare_dataset.output.index,
    output:
        predictions=f"{FLARE_EXPERIMENT}/predictions.parquet".replace(
            "{model}", "everest"
        ),
        sidecar=f"{FLARE_EXPERIMENT}/model.json".replace("{model}", "everest"),
        weights=f"{FLARE_EXPERIMENT}/model.pt".replace("{model}", "everest"),
        history=f"{FLARE_EXPERIMENT}/history.csv".replace("{model}", "everest"),
    log:
        f"{FLARE_LOGS}/train/{{flare_class}}_{{window}}h_seed{{seed}}_everest.log",
    benchmark:
        f"{FLARE_BENCHMARKS}/train/{{flare_class}}_{{window}}h_seed{{seed}}_everest.tsv"
    conda:
        "../../envs/flares.yaml"
    threads: FLARES["resources"]["train_threads"]
    resources:
        mem_mb=FLARES["resources"]["train_mem_mb"],
        runtime=FLARES["resources"]["train_runtime"],
        gpu=FLARES["resources"]["train_gpus"],
    params:
        out_dir=output_dir("predictions"),
        model_options=as_json(FLARES["everest"]),
        training_options=as_json(FLARES["training"]),
        dataset_options=as_json(FLARES["dataset"]),
    shell:
        "python -m astrodag flares train --features {input.features} --index {input.index}"
        " --out-dir {params.out_dir} --flare-class {wildcards.flare_class}"
        " --window {wildcards.window} --seed {wildcards.seed} --architecture everest"
        " --model-options {params.model_options:q} --training-options {params.training_options:q}"
        " --dataset-options {params.dataset_options:q} --threads {threads} --log {log}"


rule train_flare_baseline:
    input:
        features=rules.prepare_flare_dataset.output.features,
        index=rules.prepare_flare_dataset.output.index,
    output:
        predictions=f"{FLARE_EXPERIMENT}/predictions.parquet".replace(
            "{model}", "baseline"
        ),
        sidecar=f"{FLARE_EXPERIMENT}/model.json".replace("{model}", "baseline"),
    log:
        f"{FLARE_LOGS}/train/{{flare_class}}_{{window}}h_seed{{seed}}_baseline.log",
    benchmark:
        f"{FLARE_BENCHMARKS}/train/{{flare_class}}_{{window}}h_seed{{seed}}_baseline.tsv"
    conda:
        "../../envs/flares.yaml"
    threads: 1
    resources:
        mem_mb=FLARES["resources"]["train_mem_mb"],
        runtime=30,
    params:
        out_dir=output_dir("predictions"),
        model_options=as_json(FLARES["baseline"]),
        dataset_options=as_json(FLARES["dataset"]),
    shell:
        "python -m astrodag flares train --features {input.features} --index {input.index}"
        " --out-dir {params.out_dir} --flare-class {wildcards.flare_class}"
        " --window {wildcards.window} --seed {wildcards.seed} --architecture baseline"
        " --model-options {params.model_options:q} --dataset-options {params.dataset_options:q}"
        " --threads {threads} --log {log}"


rule sweep_flare_thresholds:
    input:
        predictions=f"{FLARE_EXPERIMENT}/predictions.parquet",
        sidecar=f"{FLARE_EXPERIMENT}/model.json",
    output:
        thresholds=f"{FLARE_EXPERIMENT}/thresholds.csv",
        metrics=f"{FLARE_EXPERIMENT}/metrics.csv",
        results=f"{FLARE_EXPERIMENT}/results.json",
    log:
        f"{FLARE_LOGS}/sweep/{{flare_class}}_{{window}}h_seed{{seed}}_{{model}}.log",
    conda:
        "../../envs/flares.yaml"
    params:
        out_dir=output_dir("results"),
        start=FLARES["sweep"]["start"],
        stop=FLARES["sweep"]["stop"],
        num=FLARES["sweep"]["num"],
        weights=as_json(FLARES["sweep"]["weights"]),
    shell:
        "python -m astrodag flares sweep --predictions {input.predictions} --model-json {input.sidecar}"
        " --out-dir {params.out_dir} --start {params.start} --stop {params.stop}"
        " --num {params.num} --weights {params.weights:q} --log {log}"


rule analyze_flare_study:
    input:
        results=flare_experiment_files("results.json"),
        predictions=flare_experiment_files("predictions.parquet"),
    output:
        report=report(
            f"{FLARE_ANALYSIS}/report.md",
            caption="../report/flare_report.rst",
            category="Flare study",
        ),
        summary=report(
            f"{FLARE_ANALYSIS}/summary_by_target.csv",
            caption="../report/flare_summary.rst",
            category="Flare study",
        ),
        all_results=f"{FLARE_ANALYSIS}/all_results.csv",
        paired=report(
            f"{FLARE_ANALYSIS}/paired_tests.csv",
            caption="../report/flare_paired.rst",
            category="Flare study",
        ),
        stability=f"{FLARE_ANALYSIS}/threshold_stability.csv",
        heatmaps=report(
            expand(
                f"{FLARE_ANALYSIS}/{{metric}}_heatmap_{{model}}.png",
                metric=["tss", "f1"],
                model=FLARE_MODELS,
            ),
            caption="../report/flare_heatmap.rst",
            category="Flare study",
            subcategory="Heatmaps",
        ),
        figures=report(
            expand(
                f"{FLARE_ANALYSIS}/{{name}}.png",
                name=[
                    "tss_by_seed",
                    "threshold_stability",
                    "performance_vs_latency",
                    "roc",
                    "precision_recall",
                    "reliability",
                    "confusion_matrix",
                ],
            ),
            caption="../report/flare_figures.rst",
            category="Flare study",
            subcategory="Figures",
        ),
    log:
        f"{FLARE_LOGS}/analyze_flare_study.log",
    benchmark:
        f"{FLARE_BENCHMARKS}/analyze_flare_study.tsv"
    conda:
        "../../envs/flares.yaml"
    resources:
        mem_mb=4000,
        runtime=30,
    params:
        out_dir=output_dir("report"),
        confidence=FLARES["analysis"]["confidence"],
        resamples=FLARES["analysis"]["bootstrap_resamples"],
        seed=FLARES["analysis"]["seed"],
        calibration=FLARES["analysis"]["calibration"],
    shell:
        "python -m astrodag flares compare --results {input.results} --predictions {input.predictions}"
        " --out-dir {params.out_dir} --confidence {params.confidence}"
        " --bootstrap-resamples {params.resamples} --seed {params.seed}"
        " --calibration {params.calibration} --log {log}"


rule flares:
    default_target: False
    input:
        rules.analyze_flare_study.output,
        # The weights too: the analysis does not read them, so that without them here a model.pt lost
        # with a killed training job would not be rebuilt while the results after it exist.
        flare_experiment_files("model.pt", models=["everest"])
        if "everest" in FLARE_MODELS
        else [],
