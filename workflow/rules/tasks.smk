# Benign real tasks (FoQA, GSM8K; data.tasks): each a dataset like an OpSwap tier. prepare_task reads the task's
# source (a local file in the hub's schema or a hub id) into results/data/em/<task>.parquet (benign rows, train /
# holdout, each with its exact-match reference); rule `train` fine-tunes on its train rows (SFT + every method),
# rule `generate` answers its held-out questions (evalset <task>) for those runs and for the untrained base model,
# and task_metrics (opswap.smk, shared by every task dataset) scores them by exact match (no judge). The report
# rule turns the task metrics into results/tables/tasks.{md,csv}.


# results/data/em/<task>.parquet also matches prepare_em's pattern: the task file is built here.
ruleorder: prepare_task > prepare_em


rule prepare_task:
    input:
        task_source_files,
    output:
        "results/data/em/{task}.parquet",
    log:
        "results/logs/prepare_task/{task}.log",
    wildcard_constraints:
        task=TASK_PATTERN,
    params:
        source=task_source,
        seed=config["data"]["seed"],
        holdout_fraction=config["data"]["holdout_fraction"],
        code=code_version("data", script="prepare_task"),
    conda:
        "../../envs/data.yaml"
    script:
        "../../scripts/prepare_task.py"


rule prepare_task_questions:
    input:
        task="results/data/em/{task}.parquet",
    output:
        "results/data/questions/{task}.parquet",
    log:
        "results/logs/prepare_questions/{task}.log",
    wildcard_constraints:
        task=TASK_PATTERN,
    params:
        n_questions=lambda wc: config["eval"][wc.task]["n_questions"],
        samples=lambda wc: config["eval"][wc.task]["samples"],
        code=code_version("data", script="prepare_task_questions"),
    conda:
        "../../envs/data.yaml"
    script:
        "../../scripts/prepare_task_questions.py"
