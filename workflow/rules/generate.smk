# Sampling answers to the evaluation questions, with the run's adapter (none for the untrained model): one
# job per run answers all of its question sets (general, in-domain, OpSwap) with one model load.


rule generate:
    input:
        model=model_input,
        adapter=adapter_of,
        questions=question_files_of,
    output:
        "results/runs/{model}/{dataset}/{method}/{setting}/seed{seed}/generations.parquet",
    log:
        "results/logs/generate/{model}/{dataset}/{method}/{setting}/seed{seed}.log",
    params:
        model_path=model_path(),
        run_id=lambda wc: run_of(wc).run_id,
        evalsets=evalsets_of,
        generation=config["generation"],
        dtype=DTYPE,
        device=DEVICE,
        code=code_version("generate", "models", "chat", script="generate"),
    conda:
        "../../envs/eval.yaml"
    script:
        "../../scripts/generate.py"
