# Sampling answers to the evaluation questions, with the run's adapter (none for the untrained model).
# generation.backend hf (default): one job per run answers all of its question sets (general, in-domain, OpSwap)
# with one model load. generation.backend vllm: one job per model answers every run's sets with one vLLM engine
# (each adapter a LoRA request); the judge and metrics rules read the same per-run files either way.


rule generate:
    input:
        model=model_input,
        adapter=adapter_of,
        questions=question_files_of,
    output:
        "results/runs/{model}/{dataset}/{method}/{setting}/seed{seed}/generations.parquet",
    log:
        "results/logs/generate/{model}/{dataset}/{method}/{setting}/seed{seed}.log",
    priority: EARLY_PRIORITY
    params:
        model_path=model_path,
        run_id=lambda wc: run_of(wc).run_id,
        evalsets=evalsets_of,
        generation=GENERATION_PARAMS,
        dtype=model_dtype,
        device=model_device,
        code=code_version("generate", "sampling", "models", "chat", script="generate"),
    conda:
        "../../envs/eval.yaml"
    script:
        "../../scripts/generate.py"


if VLLM_GENERATION:

    # Preferred over the per-run rule for every file it writes. Trade-off: the job waits for all of the model's
    # adapters, and Snakemake reruns it when any of them changes; the generation cache (generation.vllm.cache)
    # then serves every unchanged run's answers, so only the changed runs are generated again.
    ruleorder: generate_model > generate

    rule generate_model:
        input:
            model=model_input,
            adapters=vllm_generation_adapters,
            questions=vllm_generation_question_files,
        output:
            vllm_generation_outputs(),
        log:
            "results/logs/generate/{model}.log",
        params:
            model_path=model_path,
            runs=vllm_generation_runs,
            generation=VLLM_GENERATION_PARAMS,
            lora_r=config["training"]["lora"]["r"],
            dtype=model_dtype,
            device=model_device,
            code=code_version("generate", "sampling", "generate_vllm", "models", "chat", script="generate_vllm"),
        conda:
            "../../envs/vllm.yaml"
        script:
            "../../scripts/generate_vllm.py"
