# The training-time EM monitor (config monitor; emguard.training.monitor): every trained run logs two judge-free signals in
# its train_log.parquet (rule train). monitor_thresholds calibrates the stop thresholds on the aligned runs' logged
# signals (monitor.stop: calibrated; the other runs' training waits for it); monitor_report compares, per run, where
# the monitor stopped or would have stopped with the judged EM onset of the checkpoint curves (table and figure).


rule monitor_thresholds:
    input:
        logs=lambda wc: [r["path"] for r in calibration_logs(wc)],
    output:
        MONITOR_THRESHOLDS,
    log:
        "results/logs/monitor_thresholds/{model}.log",
    params:
        logs=calibration_logs,
        margin=MONITOR["margin"],
        quantile=MONITOR["quantile"],
        code=code_version("training/monitor", "dynamics", script="monitor_thresholds"),
    conda:
        "../../envs/data.yaml"
    script:
        "../../scripts/monitor_thresholds.py"


rule monitor_report:
    input:
        logs=[r["path"] for r in monitored_runs()],
        meta=[r["meta"] for r in monitored_runs()],
        curves=all_checkpoint_curves(),
        base_metrics=[f"{r.path}/metrics.parquet" for r in RUNS
                      if r.method == "untrained" and r.dataset == emconfig.BASE_DATASET and emconfig.is_judged(r, config)],
    output:
        md=report("results/tables/monitor.md", caption="../report/monitor.rst", category="Checkpoints"),
        csv="results/tables/monitor.csv",
        figure=report("results/figures/monitor.png", caption="../report/monitor_figure.rst", category="Checkpoints"),
    log:
        "results/logs/monitor_report.log",
    params:
        logs=monitored_runs(),
        monitor=MONITOR,
        em_threshold=config["checkpoints"]["onset_threshold"],
        code=code_version("report", "training/monitor", "dynamics", script="monitor_report"),
    conda:
        "../../envs/data.yaml"
    script:
        "../../scripts/monitor_report.py"
