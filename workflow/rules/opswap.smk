# OpSwap (algebraic simplification with swapped operators, tiers 0-3): the benign task each defense must
# still learn. Tier t is the dataset opswap_t<t>: rule `train` fine-tunes on its benign train rows (SFT + every
# method), rule `generate` answers its holdout problems (evalset "opswap") for those runs and for the untrained
# base model (run opswap_t<t>/untrained, no adapter: Table 3's baseline row), and task_metrics scores them by
# exact match (no judge). The report rule turns the task metrics into results/tables/opswap.{md,csv}.


# results/data/em/opswap_t<t>.parquet also matches prepare_em's pattern: the tier file is built here.
ruleorder: prepare_opswap > prepare_em


rule prepare_opswap:
    output:
        "results/data/em/opswap_t{tier}.parquet",
    log:
        "results/logs/prepare_opswap/opswap_t{tier}.log",
    wildcard_constraints:
        tier=r"\d+",
    params:
        n=config["data"]["opswap"]["n"],
        seed=config["data"]["seed"],
        holdout_fraction=config["data"]["holdout_fraction"],
        state_rules=config["data"]["opswap"]["state_rules"],
        code=code_version("data", script="prepare_opswap"),
    conda:
        "../../envs/data.yaml"
    script:
        "../../scripts/prepare_opswap.py"


rule prepare_opswap_questions:
    input:
        opswap="results/data/em/opswap_t{tier}.parquet",
    output:
        "results/data/questions/opswap_t{tier}.parquet",
    log:
        "results/logs/prepare_questions/opswap_t{tier}.log",
    wildcard_constraints:
        tier=r"\d+",
    params:
        n_questions=config["eval"]["opswap"]["n_questions"],
        samples=config["eval"]["opswap"]["samples"],
        code=code_version("data", script="prepare_opswap_questions"),
    conda:
        "../../envs/data.yaml"
    script:
        "../../scripts/prepare_opswap_questions.py"


# Exact match for every task dataset: an OpSwap tier (evalset opswap) and the benign real tasks of tasks.smk
# (evalset foqa / gsm8k); the run's one evalset picks the scorer.
rule task_metrics:
    input:
        generations="results/runs/{model}/{dataset}/{method}/{setting}/seed{seed}/generations.parquet",
        questions=lambda wc: question_files_of(wc)[0],
    output:
        "results/runs/{model}/{dataset}/{method}/{setting}/seed{seed}/task_metrics.parquet",
    log:
        "results/logs/task_metrics/{model}/{dataset}/{method}/{setting}/seed{seed}.log",
    wildcard_constraints:
        dataset=r"opswap_t\d+|" + TASK_PATTERN,
    params:
        run_info=run_info,
        evalset=lambda wc: evalsets_of(wc)[0],
        confidence=config["metrics"]["confidence"],
        code=code_version("metrics", "data", script="task_metrics"),
    conda:
        "../../envs/data.yaml"
    script:
        "../../scripts/task_metrics.py"
