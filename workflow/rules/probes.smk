# The judge-free EM measure: how far training moved each model toward misaligned answers, by likelihood.
# prepare_probes builds the probe triples (every EM domain's holdout split, the hand-written general set)
# and fails if any probe prompt occurs in a table some run trains on; train waits for it (an ancient input:
# editing the probes reruns the check and the scoring, never training). probe_nll_base scores both answers of
# every probe under the untrained model, probe_nll under one run's adapter (one job per run: it starts as
# soon as the run is trained, and a changed run rescores alone); with checkpoints.persona, the untrained model's and
# the checkpointed runs' jobs also project each probe's aligned answer on the persona vector in the same forward
# pass (column persona_proj; the checkpoint curve's persona signal); probe_shifts turns the NLLs into shifts,
# excess over the Aligned run and bootstrap intervals (cheap: bootstrap settings rerun only it).


rule prepare_probes:
    input:
        training=probe_training_files(),
        pool=probe_pool_files(),
        general=[PROBES_GENERAL] if PROBES_GENERAL else [],
    output:
        PROBE_FILE,
    log:
        "results/logs/prepare_probes.log",
    params:
        em_paths={d: f"results/data/em/{d}.parquet" for d in DOMAINS},
        general=PROBES_GENERAL,
        domains=PROBES["domains"],
        max_per_domain=PROBES["max_per_domain"],
        general_per_category=PROBES["general_per_category"],
        training_paths=probe_training_files(),
        whole_paths=probe_pool_files(),
        code=code_version("likelihood", "data", script="prepare_probes"),
    conda:
        "../../envs/data.yaml"
    script:
        "../../scripts/prepare_probes.py"


rule probe_nll_base:
    input:
        unpack(probe_persona),
        model=model_input,
        probes=PROBE_FILE,
    output:
        "results/probes/{model}/base_nll.parquet",
    log:
        "results/logs/probe_nll/{model}/base.log",
    priority: EARLY_PRIORITY
    params:
        model_path=model_path,
        probes={k: PROBES[k] for k in PROBE_NLL_KEYS},
        dtype=model_dtype,
        device=model_device,
        # the persona projection of each probe's aligned answer (checkpoints.persona): None for most jobs
        persona_layer=probe_persona_layer,
        code=probe_code,
    conda:
        "../../envs/train.yaml"
    script:
        "../../scripts/probe_nll.py"


rule probe_nll:
    input:
        unpack(probe_persona),
        model=model_input,
        probes=PROBE_FILE,
        adapter=adapter_of,
    output:
        "results/runs/{model}/{dataset}/{method}/{setting}/seed{seed}/probe_nll.parquet",
    log:
        "results/logs/probe_nll/{model}/{dataset}/{method}/{setting}/seed{seed}.log",
    params:
        model_path=model_path,
        run_id=lambda wc: run_of(wc).run_id,
        probes={k: PROBES[k] for k in PROBE_NLL_KEYS},
        dtype=model_dtype,
        device=model_device,
        # the persona projection of each probe's aligned answer (checkpoints.persona): None for most jobs
        persona_layer=probe_persona_layer,
        code=probe_code,
    conda:
        "../../envs/train.yaml"
    script:
        "../../scripts/probe_nll.py"


rule probe_shifts:
    input:
        nll=probe_nll_files,
    output:
        shifts="results/probes/{model}/shifts.parquet",
        summary="results/probes/{model}/shift_summary.parquet",
    log:
        "results/logs/probe_shifts/{model}.log",
    params:
        runs=probe_runs,
        probes={k: v for k, v in PROBES.items() if k in ("bootstrap", "seed")},
        confidence=config["metrics"]["confidence"],
        code=code_version("likelihood", script="probe_shifts"),
    conda:
        "../../envs/data.yaml"
    script:
        "../../scripts/probe_shifts.py"
