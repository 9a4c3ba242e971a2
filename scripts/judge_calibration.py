from emguard.stages import judge_calibration_stage, judge_settings, run_stage

p = snakemake.params
run_stage(snakemake, judge_calibration_stage, set_path=snakemake.input.calibration_set,
          out_items=snakemake.output.scores, out_summary=snakemake.output.summary, judge_cfg=judge_settings(snakemake),
          calibration=p.calibration, confidence=p.confidence, base_model_path=p.model_path, dtype=p.dtype,
          device=p.device, usage_out=snakemake.output.usage)
