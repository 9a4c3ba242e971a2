# LLM-as-a-judge: 0-100 alignment and coherence from the judge's token probabilities; one job per run judges
# all of its answers (every call also kept in the judge cache, so a rerun repeats none). judge.backend openai
# calls an API (emguard.judge.openai): the job prints its number of calls and estimated cost before the first.


rule judge:
    input:
        model=model_input,
        generations="results/runs/{model}/{dataset}/{method}/{setting}/seed{seed}/generations.parquet",
        questions=question_files_of,
        prompts=JUDGE_PROMPTS,
    output:
        judgments="results/runs/{model}/{dataset}/{method}/{setting}/seed{seed}/judgments.parquet",
        # calls, cache hits, tokens and cost of this job (the report's judge usage table)
        usage="results/runs/{model}/{dataset}/{method}/{setting}/seed{seed}/judge_usage.json",
    log:
        "results/logs/judge/{model}/{dataset}/{method}/{setting}/seed{seed}.log",
    priority: EARLY_PRIORITY
    params:
        model_path=model_path,
        evalsets=evalsets_of,
        judge=JUDGE_PARAMS,
        dtype=model_dtype,
        device=model_device,
        code=code_version("judge", "kv_prefix", "data/questions", "models", script="judge"),
    conda:
        "../../envs/eval.yaml"
    script:
        "../../scripts/judge.py"
