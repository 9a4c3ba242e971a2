# Per-run metrics (misaligned / incoherent rates with 95% intervals) and the report (OpSwap runs are
# scored by task_metrics in opswap.smk instead).


rule run_metrics:
    input:
        unpack(judgments_of),
    output:
        "results/runs/{model}/{dataset}/{method}/{setting}/seed{seed}/metrics.parquet",
    log:
        "results/logs/metrics/{model}/{dataset}/{method}/{setting}/seed{seed}.log",
    params:
        run_info=run_info,
        thresholds=config["metrics"],
        code=code_version("metrics"),
    conda:
        "../../envs/data.yaml"
    script:
        "../../scripts/run_metrics.py"


rule report:
    input:
        metrics=all_run_metrics(),
        train_logs=list(all_train_logs().values()),
        persona_validation=persona_validation_input(),
        task_metrics=all_task_metrics(),
    output:
        table_md=report("results/tables/em.md", caption="../report/em_table.rst", category="EM"),
        table_csv="results/tables/em.csv",
        metrics="results/metrics/em.parquet",
        figure_em=report("results/figures/em_vs_incoherence.png", caption="../report/em_vs_incoherence.rst",
                         category="EM"),
        figure_loss=report("results/figures/train_loss.png", caption="../report/train_loss.rst",
                           category="Training"),
        persona_md=report("results/tables/persona_validation.md", caption="../report/persona_validation.rst",
                          category="Persona vectors"),
        opswap_md=report("results/tables/opswap.md", caption="../report/opswap_table.rst", category="OpSwap"),
        opswap_csv="results/tables/opswap.csv",
    log:
        "results/logs/report.log",
    params:
        train_logs=all_train_logs(),
        code=code_version("report", "metrics"),
    conda:
        "../../envs/data.yaml"
    script:
        "../../scripts/report.py"
