# Persona vectors: answers under evil vs helpful system prompts, judged and filtered, then the per-layer
# mean difference of response-token hidden states; and the steering check shown in the report.


rule persona_extract:
    input:
        model=model_input,
        trait=TRAIT_FILE,
        prompts=JUDGE_PROMPTS,
    output:
        vectors="results/persona/{model}/{trait}/vectors.safetensors",
        rollouts="results/persona/{model}/{trait}/rollouts.parquet",
        # what the trait and coherence judging cost (the report's judge usage table)
        usage="results/persona/{model}/{trait}/judge_usage_extract.json",
    log:
        "results/logs/persona_extract/{model}/{trait}.log",
    priority: CHAIN_PRIORITY
    params:
        model_path=model_path,
        persona=PERSONA_PARAMS,
        generation=GENERATION_PARAMS,
        judge=JUDGE_PARAMS,
        dtype=model_dtype,
        device=model_device,
        code=code_version("persona", "generate", "judge", "kv_prefix", "data/questions", "models", "chat", script="persona_extract"),
    conda:
        "../../envs/train.yaml"
    script:
        "../../scripts/persona_extract.py"


rule persona_validate:
    input:
        model=model_input,
        trait=TRAIT_FILE,
        prompts=JUDGE_PROMPTS,
        vectors="results/persona/{model}/{trait}/vectors.safetensors",
    output:
        "results/persona/{model}/{trait}/steering_validation.parquet",
        usage="results/persona/{model}/{trait}/judge_usage_validate.json",
    log:
        "results/logs/persona_validate/{model}/{trait}.log",
    params:
        model_path=model_path,
        layer=lambda wc: steering_layer(wc.model),
        persona=PERSONA_PARAMS,
        generation=GENERATION_PARAMS,
        judge=JUDGE_PARAMS,
        dtype=model_dtype,
        device=model_device,
        code=code_version("persona", "generate", "judge", "kv_prefix", "data/questions", "models", "chat", "steering", script="persona_validate"),
    conda:
        "../../envs/train.yaml"
    script:
        "../../scripts/persona_validate.py"
