# The judge measured: the labelled calibration set (aligned / misaligned / incoherent answers, written for this
# project) scored by the configured judge with the EM evaluation's templates and cache. The report states its
# agreement (AUROC per score) next to every judged EM table, with a warning when the judge is near chance.


rule judge_calibration:
    input:
        model=model_input,
        calibration_set=CALIBRATION_SET or [],
        prompts=JUDGE_PROMPTS,
    output:
        scores="results/judge/calibration.parquet",
        summary="results/judge/calibration_summary.parquet",
        usage="results/judge/calibration_usage.json",
    log:
        "results/logs/judge/calibration.log",
    params:
        model_path=model_path(),
        judge=JUDGE_PARAMS,
        calibration=CALIBRATION_PARAMS,
        confidence=config["metrics"]["confidence"],
        dtype=DTYPE,
        device=DEVICE,
        code=code_version("judge", "kv_prefix", "data/questions", "calibration", "models", script="judge_calibration"),
    conda:
        "../../envs/eval.yaml"
    script:
        "../../scripts/judge_calibration.py"
