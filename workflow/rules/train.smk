# Fine-tuning: one run per (dataset, method, setting, seed) of the experiment grid.


rule train:
    input:
        unpack(train_inputs),
        unpack(monitor_inputs),
        model=model_input,
        # the probe check (probes.smk) runs before any training; ancient: editing the probes never retrains
        probes=ancient(PROBE_FILE),
    output:
        adapter=directory("results/runs/{model}/{dataset}/{method}/{setting}/seed{seed}/adapter"),
        log="results/runs/{model}/{dataset}/{method}/{setting}/seed{seed}/train_log.parquet",
        meta="results/runs/{model}/{dataset}/{method}/{setting}/seed{seed}/run.json",
    log:
        "results/logs/train/{model}/{dataset}/{method}/{setting}/seed{seed}.log",
    priority: train_priority
    params:
        model_path=model_path,
        subset=train_subset,
        method=lambda wc: run_of(wc).method,
        hparams=lambda wc: run_of(wc).hparams,
        # the run's learning rate (experiments.learning_rates); the section as it is for training.learning_rate
        training=run_training,
        dtype=model_dtype,
        device=model_device,
        # the training-time EM monitor (monitor.smk), None when off
        monitor=MONITOR_PARAMS,
        persona_layer=monitor_persona_layer,
        code=code_version("training/sft", "training/callbacks", "regularisers", "models", "chat", "steering", *(
            ("training/monitor", "likelihood", "persona", "kv_prefix") if MONITOR_PARAMS else ()), script="train"),
    conda:
        "../../envs/train.yaml"
    script:
        "../../scripts/train.py"
