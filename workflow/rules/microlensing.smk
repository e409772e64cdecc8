# Microlensing early classification: shards of simulated events -> each cadence's noisy photometry
# binned on the grid -> one causal per-timestep CNN per cadence -> test-split scores -> analysis ->
# comparison.


rule simulate_events:
    output:
        events=f"{ML_EVENTS}/events.parquet",
    log:
        f"{ML_LOGS}/simulate_events/shard{{shard}}.log",
    benchmark:
        f"{ML_BENCHMARKS}/simulate_events/shard{{shard}}.tsv"
    conda:
        "../../envs/microlensing.yaml"
    threads: 1
    resources:
        mem_mb=MICROLENSING["resources"]["simulate_mem_mb"],
        runtime=MICROLENSING["resources"]["simulate_runtime"],
    params:
        out_dir=output_dir("events"),
        events=MICROLENSING["simulation"]["events_per_shard"],
        epochs=MICROLENSING["time_grid"]["epochs"],
        duration=MICROLENSING["time_grid"]["duration_days"],
        seed=MICROLENSING["simulation"]["seed"],
        settings=as_json(
            {
                key: MICROLENSING["simulation"][key]
                for key in ("priors", "split_fractions")
            }
        ),
    shell:
        "python -m astrodag microlensing simulate --out-dir {params.out_dir} --shard {wildcards.shard}"
        " --events {params.events} --epochs {params.epochs} --duration-days {params.duration}"
        " --seed {params.seed} --settings {params.settings:q} --log {log}"


rule observe_cadence:
    input:
        events=rules.simulate_events.output.events,
        cadences=CADENCES_TSV,
    output:
        magnitudes=f"{ML_OBSERVATIONS}/magnitudes.npy",
        errors=f"{ML_OBSERVATIONS}/errors.npy",
        scatter=f"{ML_OBSERVATIONS}/scatter.npy",
        counts=f"{ML_OBSERVATIONS}/counts.npy",
        events=f"{ML_OBSERVATIONS}/events.parquet",
        summary=f"{ML_OBSERVATIONS}/summary.json",
    log:
        f"{ML_LOGS}/observe_cadence/{{cadence}}_shard{{shard}}.log",
    benchmark:
        f"{ML_BENCHMARKS}/observe_cadence/{{cadence}}_shard{{shard}}.tsv"
    conda:
        "../../envs/microlensing.yaml"
    threads: 1
    resources:
        mem_mb=MICROLENSING["resources"]["observe_mem_mb"],
        runtime=MICROLENSING["resources"]["observe_runtime"],
    params:
        out_dir=output_dir("events"),
        epochs=MICROLENSING["time_grid"]["epochs"],
        duration=MICROLENSING["time_grid"]["duration_days"],
        seed=MICROLENSING["observation_seed"],
        settings=as_json(MICROLENSING["observation"]),
    shell:
        "python -m astrodag microlensing observe --events {input.events} --cadences {input.cadences}"
        " --cadence {wildcards.cadence} --out-dir {params.out_dir} --epochs {params.epochs}"
        " --duration-days {params.duration} --seed {params.seed} --settings {params.settings:q}"
        " --log {log}"


rule train_microlensing_model:
    input:
        events=microlensing_observation_events,
        arrays=microlensing_observation_arrays,
        cadences=CADENCES_TSV,
    output:
        weights=f"{ML_CADENCE}/model/model.pt",
        sidecar=f"{ML_CADENCE}/model/model.json",
        history=f"{ML_CADENCE}/model/history.csv",
    log:
        f"{ML_LOGS}/train/{{cadence}}.log",
    benchmark:
        f"{ML_BENCHMARKS}/train/{{cadence}}.tsv"
    conda:
        "../../envs/microlensing.yaml"
    threads: MICROLENSING["resources"]["train_threads"]
    resources:
        mem_mb=MICROLENSING["resources"]["train_mem_mb"],
        runtime=MICROLENSING["resources"]["train_runtime"],
        gpu=MICROLENSING["resources"]["train_gpus"],
    params:
        observations=quoted_dirs("events"),
        out_dir=output_dir("weights"),
        duration=MICROLENSING["time_grid"]["duration_days"],
        seed=MICROLENSING["seed"],
        simulation=as_json(MICROLENSING["simulation"]),
        observation=as_json(MICROLENSING["observation"]),
        model=as_json(MICROLENSING["model"]),
        training=as_json(MICROLENSING["training"]),
    shell:
        "python -m astrodag microlensing train --observations {params.observations}"
        " --out-dir {params.out_dir} --cadences {input.cadences} --cadence {wildcards.cadence}"
        " --duration-days {params.duration} --seed {params.seed}"
        " --simulation-settings {params.simulation:q} --observation-settings {params.observation:q}"
        " --model-options {params.model:q} --training-options {params.training:q}"
        " --threads {threads} --log {log}"


rule predict_microlensing_test:
    input:
        events=microlensing_observation_events,
        arrays=microlensing_observation_arrays,
        weights=rules.train_microlensing_model.output.weights,
        sidecar=rules.train_microlensing_model.output.sidecar,
    output:
        probabilities=f"{ML_CADENCE}/evaluation/probabilities.npy",
        mask=f"{ML_CADENCE}/evaluation/mask.npy",
        events=f"{ML_CADENCE}/evaluation/events.parquet",
        times=f"{ML_CADENCE}/evaluation/times.npy",
        scoring=f"{ML_CADENCE}/evaluation/scoring.json",
    log:
        f"{ML_LOGS}/predict/{{cadence}}.log",
    benchmark:
        f"{ML_BENCHMARKS}/predict/{{cadence}}.tsv"
    conda:
        "../../envs/microlensing.yaml"
    threads: MICROLENSING["resources"]["train_threads"]
    resources:
        mem_mb=2000,
        runtime=60,
    params:
        observations=quoted_dirs("events"),
        out_dir=output_dir("probabilities"),
        batch_size=MICROLENSING["resources"]["predict_batch_size"],
    shell:
        "python -m astrodag microlensing predict --observations {params.observations}"
        " --model {input.weights} --model-json {input.sidecar} --out-dir {params.out_dir}"
        " --split test --batch-size {params.batch_size} --threads {threads} --log {log}"


rule evaluate_microlensing_cadence:
    input:
        rules.predict_microlensing_test.output,
    output:
        metrics=f"{ML_CADENCE}/analysis/metrics.json",
        early=f"{ML_CADENCE}/analysis/early_detection.csv",
        detection=f"{ML_CADENCE}/analysis/detection_summary.csv",
        detection_times=f"{ML_CADENCE}/analysis/detection_times.csv",
        phase=f"{ML_CADENCE}/analysis/early_detection_phase.csv",
        figures=multiext(
            f"{ML_CADENCE}/analysis/",
            "roc.png",
            "confusion_matrix.png",
            "early_detection.png",
            "early_detection_phase.png",
            "detection_times.png",
        ),
    log:
        f"{ML_LOGS}/evaluate/{{cadence}}.log",
    conda:
        "../../envs/microlensing.yaml"
    resources:
        mem_mb=2000,
        runtime=30,
    params:
        evaluation_dir=input_dir(0),
        out_dir=output_dir("metrics"),
        fractions=" ".join(str(f) for f in MICROLENSING["analysis"]["fractions"]),
        thresholds=" ".join(
            str(t) for t in MICROLENSING["analysis"]["detection_thresholds"]
        ),
        consecutive=MICROLENSING["analysis"]["consecutive_epochs"],
        phases=" ".join(str(k) for k in MICROLENSING["analysis"]["event_phases_tE"]),
        after_brightening=" ".join(
            str(k) for k in MICROLENSING["analysis"]["after_brightening_tE"]
        ),
        shares=" ".join(
            str(p) for p in MICROLENSING["analysis"]["deployment_binary_shares"]
        ),
    shell:
        "python -m astrodag microlensing evaluate --evaluation-dir {params.evaluation_dir}"
        " --out-dir {params.out_dir} --cadence {wildcards.cadence}"
        " --fractions {params.fractions} --thresholds {params.thresholds}"
        " --consecutive-epochs {params.consecutive} --event-phases {params.phases}"
        " --after-brightening {params.after_brightening} --binary-shares {params.shares} --log {log}"


rule compare_cadences:
    input:
        metrics=expand(f"{ML_CADENCE}/analysis/metrics.json", cadence=CADENCES),
    output:
        report=report(
            f"{ML_COMPARISON}/comparison.md",
            caption="../report/microlensing_comparison.rst",
            category="Microlensing",
        ),
        text=f"{ML_COMPARISON}/comparison.txt",
        json=f"{ML_COMPARISON}/comparison.json",
        summary=report(
            f"{ML_COMPARISON}/summary.csv",
            caption="../report/microlensing_summary.rst",
            category="Microlensing",
        ),
        figures=report(
            multiext(
                f"{ML_COMPARISON}/",
                "early_detection_comparison.png",
                "early_detection_phase_comparison.png",
                "roc_comparison.png",
                "accuracy_comparison.png",
            ),
            caption="../report/microlensing_figures.rst",
            category="Microlensing",
        ),
    log:
        f"{ML_LOGS}/compare_cadences.log",
    conda:
        "../../envs/microlensing.yaml"
    params:
        cadence_dirs=quoted_dirs("metrics", names=CADENCES),
        out_dir=output_dir("report"),
    shell:
        "python -m astrodag microlensing compare --cadence-dirs {params.cadence_dirs}"
        " --out-dir {params.out_dir} --log {log}"


rule microlensing:
    default_target: False
    input:
        rules.compare_cadences.output,
        # The weights too (see rule flares): a model.pt lost with a killed job is retrained.
        expand(f"{ML_CADENCE}/model/model.pt", cadence=CADENCES),
