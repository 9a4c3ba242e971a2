# Evaluation over training checkpoints (config section checkpoints, emguard.checkpoints). Off by default: then
# nothing below is defined and the DAG is what it is without this file. On: each run checkpoints.runs selects is
# trained by train_checkpoints, which also writes its checkpoints/step-<N>/ adapters (declared outputs, so the
# DAG knows them), and each checkpoint is evaluated like the final adapter, by the same stages: answers to the
# general questions (checkpoints.general_samples each) and the in-domain holdout, judged, as metrics rows (runs
# eval.judged judges, unless checkpoints.judged is false: a judge-free sweep); the task metric (holdout NLL of the
# run's own fine-tuning answers for an EM dataset, exact match for OpSwap / benign tasks); the probe NLLs of the
# likelihood shift, with the persona projection from the same pass (checkpoints.persona; the untrained model's job
# projects too, probes.smk). For an EM run the holdout NLL and the probe NLLs of a checkpoint come from one job
# (checkpoint_signals), and so do its final adapter's (final_signals, in place of the run's probe_nll job). checkpoints.datasets narrows the runs to some datasets
# (train_checkpoints' wildcard constraints pick exactly those runs). checkpoint_curve joins them with the
# final adapter's (the last checkpoint: its answers, metrics and probe NLLs are the run's own, never evaluated a
# second time) into <run>/checkpoint_curve.parquet; the report's emergence table and figure read the curves.
# Checkpoint answers are generated with transformers (the per-run rule), whatever generation.backend is.

RUN_DIR = "results/runs/{model}/{dataset}/{method}/{setting}/seed{seed}"
CHECKPOINT_ADAPTER = RUN_DIR + "/checkpoints/step-{step}"
CHECKPOINT_EVAL = RUN_DIR + "/checkpoint_eval/step-{step}"
CHECKPOINT_LOG = "{model}/{dataset}/{method}/{setting}/seed{seed}/step-{step}.log"


if CHECKPOINT_RUNS:

    # The selected methods' runs: training as rule train, its checkpoints saved and declared.
    use rule train as train_checkpoints with:
        output:
            adapter=directory(RUN_DIR + "/adapter"),
            log=RUN_DIR + "/train_log.parquet",
            meta=RUN_DIR + "/run.json",
            checkpoints=[directory(RUN_DIR + f"/checkpoints/step-{s}") for s in CHECKPOINT_STEPS],
        params:
            training=checkpoint_training(),
        wildcard_constraints:
            method=checkpoint_methods(),
            dataset=checkpoint_datasets(),

    ruleorder: train_checkpoints > train

    if CHECKPOINTS["general_samples"]:

        rule prepare_checkpoint_questions:
            input:
                "results/data/questions/general.parquet",
            output:
                "results/data/questions/general_checkpoint.parquet",
            log:
                "results/logs/prepare_checkpoint_questions.log",
            params:
                samples=CHECKPOINTS["general_samples"],
                code=code_version(script="checkpoint_questions"),
            conda:
                "../../envs/data.yaml"
            script:
                "../../scripts/checkpoint_questions.py"

    rule generate_checkpoint:
        input:
            model=model_input,
            adapter=CHECKPOINT_ADAPTER,
            questions=checkpoint_question_files,
        output:
            CHECKPOINT_EVAL + "/generations.parquet",
        log:
            "results/logs/generate_checkpoint/" + CHECKPOINT_LOG,
        params:
            model_path=model_path,
            run_id=lambda wc: run_of(wc).run_id,
            evalsets=evalsets_of,
            checkpoint=lambda wc: f"step-{wc.step}",
            generation=GENERATION_PARAMS,
            dtype=model_dtype,
            device=model_device,
            code=code_version("generate", "sampling", "models", "chat", script="generate_checkpoint"),
        conda:
            "../../envs/eval.yaml"
        script:
            "../../scripts/generate_checkpoint.py"

    use rule judge as judge_checkpoint with:
        input:
            model=model_input,
            generations=CHECKPOINT_EVAL + "/generations.parquet",
            questions=checkpoint_question_files,
            prompts=JUDGE_PROMPTS,
        output:
            judgments=CHECKPOINT_EVAL + "/judgments.parquet",
            usage=CHECKPOINT_EVAL + "/judge_usage.json",
        log:
            "results/logs/judge_checkpoint/" + CHECKPOINT_LOG,

    use rule run_metrics as checkpoint_metrics with:
        input:
            judgments=CHECKPOINT_EVAL + "/judgments.parquet",
        output:
            CHECKPOINT_EVAL + "/metrics.parquet",
            questions=CHECKPOINT_EVAL + "/question_metrics.parquet",
            labels=CHECKPOINT_EVAL + "/label_metrics.parquet",
        log:
            "results/logs/checkpoint_metrics/" + CHECKPOINT_LOG,

    use rule task_metrics as checkpoint_task_metrics with:
        input:
            generations=CHECKPOINT_EVAL + "/generations.parquet",
            questions=lambda wc: question_files_of(wc)[0],
        output:
            CHECKPOINT_EVAL + "/task_metrics.parquet",
        log:
            "results/logs/checkpoint_task_metrics/" + CHECKPOINT_LOG,

    use rule probe_nll as checkpoint_probe_nll with:
        input:
            unpack(probe_persona),
            model=model_input,
            probes=PROBE_FILE,
            adapter=[CHECKPOINT_ADAPTER],
        output:
            CHECKPOINT_EVAL + "/probe_nll.parquet",
        log:
            "results/logs/checkpoint_probe_nll/" + CHECKPOINT_LOG,

    # An EM run's judge-free signals at a checkpoint: its task metric (holdout NLL of the run's own fine-tuning
    # answers) and its probe NLLs (with the persona projection) in one job, one model load; and the same for the
    # final adapter of a checkpointed EM run (the last point of its curve), in place of its probe_nll job. Task
    # runs (OpSwap, benign tasks) keep checkpoint_probe_nll: their task metric is exact match on answers.
    if EM_CHECKPOINT_DATASETS:

        rule checkpoint_signals:
            input:
                unpack(probe_persona),
                model=model_input,
                probes=PROBE_FILE,
                em="results/data/em/{dataset}.parquet",
                adapter=CHECKPOINT_ADAPTER,
            output:
                task=CHECKPOINT_EVAL + "/task_nll.parquet",
                probes=CHECKPOINT_EVAL + "/probe_nll.parquet",
            log:
                "results/logs/checkpoint_signals/" + CHECKPOINT_LOG,
            params:
                model_path=model_path,
                run_id=lambda wc: run_of(wc).run_id,
                subset=lambda wc: run_of(wc).train_subset,
                batch_size=PROBES["batch_size"],
                # as training reads the answers
                max_length=config["training"]["max_length"],
                probes={k: PROBES[k] for k in PROBE_NLL_KEYS},
                persona_layer=probe_persona_layer,
                dtype=model_dtype,
                device=model_device,
                code=code_version("checkpoints", "likelihood", "kv_prefix", "models", "chat", "persona", "steering",
                                  script="adapter_signals"),
            wildcard_constraints:
                dataset=EM_CHECKPOINT_DATASETS_PATTERN,
            conda:
                "../../envs/train.yaml"
            script:
                "../../scripts/adapter_signals.py"

        use rule checkpoint_signals as final_signals with:
            input:
                unpack(probe_persona),
                model=model_input,
                probes=PROBE_FILE,
                em="results/data/em/{dataset}.parquet",
                adapter=RUN_DIR + "/adapter",
            output:
                task=RUN_DIR + "/task_nll.parquet",
                probes=RUN_DIR + "/probe_nll.parquet",
            log:
                "results/logs/final_signals/{model}/{dataset}/{method}/{setting}/seed{seed}.log",
            wildcard_constraints:
                method=checkpoint_methods(),
                dataset=EM_CHECKPOINT_DATASETS_PATTERN,

        ruleorder: final_signals > probe_nll
        ruleorder: checkpoint_signals > checkpoint_probe_nll

    rule checkpoint_curve:
        input:
            unpack(checkpoint_curve_inputs),
        output:
            RUN_DIR + "/checkpoint_curve.parquet",
        log:
            "results/logs/checkpoint_curve/{model}/{dataset}/{method}/{setting}/seed{seed}.log",
        params:
            run_info=run_info,
            steps=CHECKPOINT_STEPS,
            probes={k: PROBES[k] for k in ("bootstrap", "seed")},
            confidence=config["metrics"]["confidence"],
            code=code_version("checkpoints", "likelihood", "metrics", script="checkpoint_curve"),
        conda:
            "../../envs/data.yaml"
        script:
            "../../scripts/checkpoint_curve.py"

    localrules:
        checkpoint_metrics,
        checkpoint_task_metrics,
        checkpoint_curve,

    if CHECKPOINTS["general_samples"]:

        localrules:
            prepare_checkpoint_questions,
