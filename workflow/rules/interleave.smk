# Interleaving safety data: the benign pool's answer NLLs under the aligned model and every misaligned
# adapter some target needs (pool_nll: one job, one model load, K + 1 passes for all targets); each
# target's score s_d from its leave-one-out adapters (score_pool: cheap); select (random / plus / plusplus
# / onpolicy), spread into the fine-tuning order. Changing the fraction reruns only selection and below;
# changing eps or the refusal keywords reruns score_pool and below, not the NLLs. These jobs are the main job's
# longest chain: they run first among the ready jobs (CHAIN_PRIORITY, common.smk).


rule pool_nll:
    input:
        model=model_input,
        pool="results/data/pool/pool.parquet",
        adapters=lambda wc: list(scoring_adapters(wc).values()),
    output:
        "results/interleave/{model}/pool_nll.parquet",
    log:
        "results/logs/pool_nll/{model}.log",
    priority: CHAIN_PRIORITY
    params:
        model_path=model_path,
        adapters=scoring_adapters,
        interleave={k: config["interleave"][k] for k in NLL_KEYS},
        dtype=model_dtype,
        device=model_device,
        code=code_version("interleave", "models", "chat", script="pool_nll"),
    conda:
        "../../envs/train.yaml"
    script:
        "../../scripts/pool_nll.py"


rule score_pool:
    input:
        nll="results/interleave/{model}/pool_nll.parquet",
        pool="results/data/pool/pool.parquet",
    output:
        "results/interleave/{model}/{dataset}/scores.parquet",
    log:
        "results/logs/score_pool/{model}/{dataset}.log",
    priority: CHAIN_PRIORITY
    params:
        adapters=lambda wc: leave_one_out_domains(wc.dataset),
        interleave={k: v for k, v in config["interleave"].items() if k not in NLL_KEYS},
        code=code_version("interleave", script="score_pool"),
    conda:
        "../../envs/train.yaml"
    script:
        "../../scripts/score_pool.py"


rule onpolicy_answers:
    input:
        model=model_input,
        pool="results/data/pool/pool.parquet",
        em="results/data/em/{dataset}.parquet",
    output:
        "results/interleave/{model}/{dataset}/onpolicy_answers_frac{frac}_seed{seed}.parquet",
    log:
        "results/logs/onpolicy_answers/{model}/{dataset}/frac{frac}_seed{seed}.log",
    priority: CHAIN_PRIORITY
    params:
        model_path=model_path,
        generation=GENERATION_PARAMS,
        subset=interleave_subset,
        dtype=model_dtype,
        device=model_device,
        code=code_version("interleave", "generate", "models", "chat", script="onpolicy_answers"),
    conda:
        "../../envs/train.yaml"
    script:
        "../../scripts/onpolicy_answers.py"


rule interleave_set:
    input:
        unpack(interleave_inputs),
        em="results/data/em/{dataset}.parquet",
        pool="results/data/pool/pool.parquet",
    output:
        "results/interleave/{model}/{dataset}/{variant}_frac{frac}_seed{seed}.parquet",
    log:
        "results/logs/interleave_set/{model}/{dataset}/{variant}_frac{frac}_seed{seed}.log",
    priority: CHAIN_PRIORITY
    params:
        subset=interleave_subset,
        code=code_version("interleave", script="interleave_set"),
    conda:
        "../../envs/train.yaml"
    script:
        "../../scripts/interleave_set.py"
