# Sampling answers to the evaluation questions, with the run's adapter (none for the untrained model).


rule generate:
    input:
        model=model_input,
        adapter=adapter_of,
        questions=questions_of,
    output:
        "results/runs/{model}/{dataset}/{method}/{setting}/seed{seed}/generations/{evalset}.parquet",
    log:
        "results/logs/generate/{model}/{dataset}/{method}/{setting}/seed{seed}/{evalset}.log",
    params:
        model_path=model_path(),
        run_id=lambda wc: run_of(wc).run_id,
        generation=config["generation"],
        code=code_version("generate", "models", "chat"),
    conda:
        "../../envs/eval.yaml"
    script:
        "../../scripts/generate.py"
