# The RL setting (issue 13; the paper's Appendix B.3, Tables 5 and 9): GRPO on math word problems, plain and with
# the defenses of rl.methods as interventions, every seed of experiments.seeds. prepare_rl_problems writes the
# problems (train / holdout); train_grpo one run (adapter, train log with every reward component, run.json with the
# best checkpoint); evaluate_grpo its held-out accuracy and reward (the untrained model's too); rl_report the
# table (results/tables/rl.{md,csv}) and reward curves (results/figures/rl_rewards.png), which say the setting is
# off when rl.enabled is false, the only RL job then planned. Stages: emguard/stages/rl.py.


rule prepare_rl_problems:
    input:
        rl_problem_files(),
    output:
        RL_PROBLEMS,
    log:
        "results/logs/prepare_rl_problems.log",
    params:
        problems=rl_problem_params(),
        n_eval=RL["eval"]["n_problems"],
        code=code_version("data/math_problems", "data/tasks", "data/_util", script="prepare_rl_problems"),
    conda:
        "../../envs/data.yaml"
    script:
        "../../scripts/prepare_rl_problems.py"


rule train_grpo:
    input:
        unpack(rl_train_inputs),
        model=model_input,
    output:
        adapter=directory("results/rl/{model}/{method}/{setting}/seed{seed}/adapter"),
        log="results/rl/{model}/{method}/{setting}/seed{seed}/train_log.parquet",
        meta="results/rl/{model}/{method}/{setting}/seed{seed}/run.json",
    log:
        "results/logs/train_grpo/{model}/{method}/{setting}/seed{seed}.log",
    params:
        model_path=model_path,
        method=lambda wc: rl_run_of(wc).method,
        hparams=lambda wc: rl_run_of(wc).hparams,
        training=RL["training"],
        rewards=RL["rewards"],
        judge=RL_JUDGE,
        keep_checkpoints=RL["keep_checkpoints"],
        dtype=model_dtype,
        device=model_device,
        code=code_version("training/grpo", "training/callbacks", "training/sft", "rewards", "regularisers", "models", "chat", "steering",
                             "interleave", "persona", "data/math_problems", "data/tasks",
                             *(("judge",) if RL_JUDGE else ()), script="train_grpo"),
    conda:
        "../../envs/train.yaml"
    script:
        "../../scripts/train_grpo.py"


rule evaluate_grpo:
    input:
        unpack(rl_eval_inputs),
        model=model_input,
    output:
        answers="results/rl/{model}/{method}/{setting}/seed{seed}/eval_answers.parquet",
        metrics="results/rl/{model}/{method}/{setting}/seed{seed}/eval_metrics.parquet",
    log:
        "results/logs/evaluate_grpo/{model}/{method}/{setting}/seed{seed}.log",
    params:
        model_path=model_path,
        run_info=rl_run_info,
        evaluation=RL["eval"],
        rewards=RL["rewards"],
        judge=RL_JUDGE,
        dtype=model_dtype,
        device=model_device,
        code=code_version("training/grpo", "rewards", "generate", "models", "chat", "metrics", "data/math_problems",
                             "data/tasks", *(("judge",) if RL_JUDGE else ()), script="evaluate_grpo"),
    conda:
        "../../envs/train.yaml"
    script:
        "../../scripts/evaluate_grpo.py"


rule rl_report:
    input:
        metrics=rl_eval_metrics(),
        logs=[r["log"] for r in rl_trained_runs()],
        meta=[r["meta"] for r in rl_trained_runs()],
    output:
        table_md=report("results/tables/rl.md", caption="../report/rl_table.rst", category="RL"),
        table_csv="results/tables/rl.csv",
        figure=report("results/figures/rl_rewards.png", caption="../report/rl_rewards.rst", category="RL"),
    log:
        "results/logs/rl_report.log",
    params:
        enabled=bool(RL_RUNS),
        runs=rl_trained_runs(),
        confidence=config["metrics"]["confidence"],
        code=code_version("report/rl", "report/_common", "metrics", script="rl_report"),
    conda:
        "../../envs/data.yaml"
    script:
        "../../scripts/rl_report.py"
