# The judge measured: the labelled calibration set (aligned / misaligned / incoherent answers, written for this
# project) scored by the configured judge with the EM evaluation's templates and cache. The report states its
# agreement (AUROC per score) next to every judged EM table, with a warning when the judge is near chance.


rule judge_calibration:
    input:
        # the judge's base model (judge.model: base, one model only; emguard.config refuses it with several)
        model=model_input(MODEL_FIRST),
        calibration_set=CALIBRATION_SET or [],
        prompts=JUDGE_PROMPTS,
    output:
        scores="results/judge/calibration.parquet",
        summary="results/judge/calibration_summary.parquet",
        usage="results/judge/calibration_usage.json",
    log:
        "results/logs/judge/calibration.log",
    priority: EARLY_PRIORITY
    params:
        model_path=model_path(MODEL_FIRST),
        judge=JUDGE_PARAMS,
        calibration=CALIBRATION_PARAMS,
        confidence=config["metrics"]["confidence"],
        dtype=MODELS[MODEL_FIRST]["dtype"],
        device=MODELS[MODEL_FIRST]["device"],
        code=code_version("judge", "kv_prefix", "data/questions", "calibration", "models", script="judge_calibration"),
    conda:
        "../../envs/eval.yaml"
    script:
        "../../scripts/judge_calibration.py"
