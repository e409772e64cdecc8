# Supernova archive: [synthetic survey] -> one query per SN -> same-mission/same-filter pairs
# (a checkpoint: the pairs table is what the rest of the track expands over) -> one download per pair.


rule simulate_survey:
    input:
        catalog=SN_CATALOG,
    output:
        observations=f"{SN_SYNTHETIC}/observations.csv",
        truth=f"{SN_SYNTHETIC}/truth.csv",
        summary=f"{SN_SYNTHETIC}/summary.json",
        files=directory(f"{SN_SYNTHETIC}/files"),
    log:
        f"{SN_LOGS}/simulate_survey.log",
    benchmark:
        f"{SN_BENCHMARKS}/simulate_survey.tsv"
    conda:
        "../../envs/supernova.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=30,
    params:
        out_dir=output_dir("observations"),
        settings=as_json(SUPERNOVA["survey"]),
        seed=SUPERNOVA["survey_seed"],
    shell:
        "python -m astrodag supernova simulate --catalog {input.catalog} --out-dir {params.out_dir}"
        " --settings {params.settings:q} --seed {params.seed} --log {log}"


rule query_archive:
    input:
        catalog=SN_CATALOG,
        archive=supernova_archive_inputs,
    output:
        f"{SN_ARCHIVE}/queries/{{sn}}.csv",
    log:
        f"{SN_LOGS}/query_archive/{{sn}}.log",
    conda:
        "../../envs/supernova.yaml"
    resources:
        mem_mb=1000,
        runtime=20,
        mast_connections=SN_MAST_CALLS,
    params:
        name=lambda wildcards: shlex.quote(SN_NAMES[wildcards.sn]),
        backend=supernova_backend(),
        radius=SUPERNOVA["query"]["radius_arcmin"],
        missions=(
            f"--missions {' '.join(SUPERNOVA['query']['missions'])}"
            if SUPERNOVA["query"]["missions"]
            else ""
        ),
        cache_dir=SN_CACHE,
        settings=as_json(SUPERNOVA["archive"]),
    shell:
        "python -m astrodag supernova query --catalog {input.catalog} --sn {params.name}"
        " {params.backend} --radius-arcmin {params.radius} {params.missions}"
        " --settings {params.settings:q} --cache-dir {params.cache_dir} --out {output} --log {log}"


checkpoint pair_observations:
    input:
        catalog=SN_CATALOG,
        observations=expand(f"{SN_ARCHIVE}/queries/{{sn}}.csv", sn=SN_NAMES),
    output:
        pairs=f"{SN_ARCHIVE}/pairs.csv",
        decisions=f"{SN_ARCHIVE}/decisions.csv",
        yield_summary=f"{SN_ARCHIVE}/yield.csv",
    log:
        f"{SN_LOGS}/pair_observations.log",
    conda:
        "../../envs/supernova.yaml"
    resources:
        mem_mb=1000,
        runtime=20,
    params:
        settings=as_json(SUPERNOVA["pairing"]),
    shell:
        "python -m astrodag supernova pair --observations {input.observations} --catalog {input.catalog}"
        " --settings {params.settings:q} --pairs {output.pairs} --decisions {output.decisions}"
        " --yield-summary {output.yield_summary} --log {log}"


rule download_pair:
    input:
        pairs=f"{SN_ARCHIVE}/pairs.csv",
        archive=supernova_archive_inputs,
    output:
        science=f"{SN_PAIR}/science.fits",
        reference=f"{SN_PAIR}/reference.fits",
        record=f"{SN_PAIR}/download.json",
    log:
        f"{SN_LOGS}/download_pair/{{pair_id}}.log",
    benchmark:
        f"{SN_BENCHMARKS}/download_pair/{{pair_id}}.tsv"
    conda:
        "../../envs/supernova.yaml"
    resources:
        mem_mb=1000,
        runtime=60,
        mast_connections=SN_MAST_CALLS,
    params:
        backend=supernova_backend(),
        cache_dir=SN_CACHE,
        out_dir=output_dir("record"),
        settings=as_json(SUPERNOVA["archive"]),
    shell:
        "python -m astrodag supernova download --pairs {input.pairs} --pair-id {wildcards.pair_id}"
        " {params.backend} --settings {params.settings:q} --cache-dir {params.cache_dir}"
        " --out-dir {params.out_dir} --log {log}"
