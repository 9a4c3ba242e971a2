# Per-run metrics (misaligned / incoherent rates with 95% intervals) and the report (OpSwap, FoQA and GSM8K
# runs are scored by task_metrics in opswap.smk instead).


rule run_metrics:
    input:
        judgments="results/runs/{model}/{dataset}/{method}/{setting}/seed{seed}/judgments.parquet",
    output:
        "results/runs/{model}/{dataset}/{method}/{setting}/seed{seed}/metrics.parquet",
        questions="results/runs/{model}/{dataset}/{method}/{setting}/seed{seed}/question_metrics.parquet",
        # the label judge's distributions (questions of type free_form_judge; no rows without any)
        labels="results/runs/{model}/{dataset}/{method}/{setting}/seed{seed}/label_metrics.parquet",
    log:
        "results/logs/metrics/{model}/{dataset}/{method}/{setting}/seed{seed}.log",
    params:
        evalsets=evalsets_of,
        run_info=run_info,
        thresholds=RUN_METRIC_PARAMS,
        code=code_version("metrics", script="run_metrics"),
    conda:
        "../../envs/data.yaml"
    script:
        "../../scripts/run_metrics.py"


rule report:
    input:
        metrics=all_run_metrics(),
        question_metrics=[m.replace("metrics.parquet", "question_metrics.parquet") for m in all_run_metrics()],
        label_metrics=[m.replace("metrics.parquet", "label_metrics.parquet") for m in all_run_metrics()],
        train_logs=list(all_train_logs().values()),
        persona_validation=persona_validation_input(),
        task_metrics=all_task_metrics(),
        # only for configs with an SFT plus / plusplus run (SFT_SCORED_TARGETS); otherwise the table says there is none
        # the first model's pool NLLs (several models: the table says which)
        eps_nll=[f"results/interleave/{MODEL_FIRST}/pool_nll.parquet"] if SFT_SCORED_TARGETS else [],
        eps_pool=["results/data/pool/pool.parquet"] if SFT_SCORED_TARGETS else [],
        eps_em=[f"results/data/em/{t}.parquet" for t in SFT_SCORED_TARGETS],
        shifts=shift_summaries(),
        # the judge's agreement with labelled answers, stated above the judged EM table
        calibration=calibration_summary(),
        judge_usage=all_judge_usage(),
        # each checkpointed run's curve (checkpoints.smk); none: the emergence table and figure say so
        curves=all_checkpoint_curves(),
        # the monitor's stops and thresholds, marked on the emergence figure (monitor.smk; none when it is off)
        monitor=["results/tables/monitor.csv"] if MONITOR["enabled"] else [],
    output:
        # the HTML report's front page (workflow/report/workflow.rst) opens with this file
        headline_md=report("results/tables/headline.md", caption="../report/headline.rst", category="Headline"),
        table_md=report("results/tables/em.md", caption="../report/em_table.rst", category="EM"),
        table_csv="results/tables/em.csv",
        questions_md=report("results/tables/em_questions.md", caption="../report/em_questions.rst", category="EM"),
        questions_csv="results/tables/em_questions.csv",
        labels_md=report("results/tables/em_labels.md", caption="../report/em_labels.rst", category="EM"),
        labels_csv="results/tables/em_labels.csv",
        metrics="results/metrics/em.parquet",
        figure_em=report("results/figures/em_vs_incoherence.png", caption="../report/em_vs_incoherence.rst",
                         category="EM"),
        figure_loss=report("results/figures/train_loss.png", caption="../report/train_loss.rst",
                           category="Training"),
        persona_md=report("results/tables/persona_validation.md", caption="../report/persona_validation.rst",
                          category="Persona vectors"),
        opswap_md=report("results/tables/opswap.md", caption="../report/opswap_table.rst", category="OpSwap"),
        opswap_csv="results/tables/opswap.csv",
        tasks_md=report("results/tables/tasks.md", caption="../report/tasks_table.rst", category="Benign tasks"),
        tasks_csv="results/tables/tasks.csv",
        eps_md=report("results/tables/eps_lengths.md", caption="../report/eps_lengths.rst", category="Interleaving"),
        eps_csv="results/tables/eps_lengths.csv",
        likelihood_md=report("results/tables/likelihood.md", caption="../report/likelihood_table.rst",
                             category="Likelihood"),
        likelihood_csv="results/tables/likelihood.csv",
        judge_usage_md=report("results/tables/judge_usage.md", caption="../report/judge_usage.rst", category="EM"),
        judge_usage_csv="results/tables/judge_usage.csv",
        figure_shift=report("results/figures/likelihood_shift.png", caption="../report/likelihood_shift.rst",
                            category="Likelihood"),
        calibration_md=report("results/tables/judge_calibration.md", caption="../report/judge_calibration.rst",
                              category="EM"),
        consistency_md=report("results/tables/em_consistency.md", caption="../report/em_consistency.rst",
                              category="EM"),
        consistency_csv="results/tables/em_consistency.csv",
        # the size/EM correlation across base models (fewer than 3: the file says r is undefined)
        size_md=report("results/tables/em_model_size.md", caption="../report/em_model_size.rst", category="EM"),
        size_csv="results/tables/em_model_size.csv",
        emergence_md=report("results/tables/emergence.md", caption="../report/emergence.rst", category="Checkpoints"),
        emergence_csv="results/tables/emergence.csv",
        figure_emergence=report("results/figures/emergence.png", caption="../report/emergence_figure.rst",
                                category="Checkpoints"),
    log:
        "results/logs/report.log",
    params:
        train_logs=all_train_logs(),
        eps_targets=eps_length_targets(),
        interleave={k: v for k, v in config["interleave"].items() if k not in NLL_KEYS},
        # stated above the EM tables (and checked against what the metrics rows record)
        metric_definition=config["metrics"],
        indomain_questions=config["eval"]["indomain"]["n_questions"],
        # every EM run, judged or not: the consistency table lists the unjudged ones as not judged
        em_runs=consistency_runs(),
        # each base model's size sources (params_b, hub id, local folder) for the size/EM correlation
        model_sizes=model_sizes(),
        eps_note=(f"Model {MODEL_FIRST}: the first of the config's {len(MODELS)} base models (the others' pool NLLs: "
                  f"results/interleave/<model>/pool_nll.parquet)." if len(MODELS) > 1 else None),
        emergence=EMERGENCE_PARAMS,
        code=code_version("report", "metrics", "interleave", "likelihood", "calibration", "config", "dynamics",
                          "checkpoints", script="report"),
    conda:
        "../../envs/data.yaml"
    script:
        "../../scripts/report.py"


# Adversarial probing of latent EM (eval.adversarial): the adversarial set's misaligned rate against the general
# questions', at the final adapter and at the emergence analysis' early-stop checkpoint. Only when the set is on.
if config["eval"]["adversarial"]["source"]:

    rule adversarial_report:
        input:
            metrics=all_run_metrics(),
            emergence="results/tables/emergence.csv",
            checkpoint_metrics=[f"{d}/metrics.parquet" for r in CHECKPOINT_RUNS if checkpoint_judged(r)
                                for d in checkpoint_evals(r)],
        output:
            md=report("results/tables/adversarial.md", caption="../report/adversarial.rst", category="EM"),
            csv="results/tables/adversarial.csv",
        log:
            "results/logs/adversarial_report.log",
        params:
            code=code_version("report", script="adversarial_report"),
        conda:
            "../../envs/data.yaml"
        script:
            "../../scripts/adversarial_report.py"
