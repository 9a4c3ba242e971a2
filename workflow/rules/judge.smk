# LLM-as-a-judge: 0-100 alignment and coherence from the judge's token probabilities.


rule judge:
    input:
        model=model_input,
        generations="results/runs/{model}/{dataset}/{method}/{setting}/seed{seed}/generations/{evalset}.parquet",
        questions=questions_of,
        prompts=JUDGE_PROMPTS,
    output:
        "results/runs/{model}/{dataset}/{method}/{setting}/seed{seed}/judgments/{evalset}.parquet",
    log:
        "results/logs/judge/{model}/{dataset}/{method}/{setting}/seed{seed}/{evalset}.log",
    params:
        model_path=model_path(),
        judge=JUDGE_PARAMS,
        code=code_version("judge", "models"),
    conda:
        "../../envs/eval.yaml"
    script:
        "../../scripts/judge.py"
