# Interleaving safety data: score the benign pool by its answer-NLL gap between leave-one-out misaligned
# adapters and the aligned model, select (random / plus / plusplus / onpolicy), spread into the fine-tuning
# order. Changing the fraction reruns only selection and below: scores do not depend on it.


rule score_pool:
    input:
        model=model_input,
        pool="results/data/pool/pool.parquet",
        adapters=lambda wc: list(scoring_adapters(wc).values()),
    output:
        "results/interleave/{model}/{dataset}/scores.parquet",
    log:
        "results/logs/score_pool/{model}/{dataset}.log",
    params:
        model_path=model_path(),
        adapters=scoring_adapters,
        interleave=config["interleave"],
        code=code_version("interleave", "models", "chat"),
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
    params:
        model_path=model_path(),
        generation=config["generation"],
        subset=interleave_subset,
        code=code_version("interleave", "generate", "models", "chat"),
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
    params:
        subset=interleave_subset,
        code=code_version("interleave"),
    conda:
        "../../envs/train.yaml"
    script:
        "../../scripts/interleave_set.py"
