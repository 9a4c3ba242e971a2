from emguard.stages import judge_run, judge_settings, run_stage

p = snakemake.params
run_stage(snakemake, judge_run, generations_path=snakemake.input.generations,
          questions=dict(zip(p.evalsets, snakemake.input.questions)), out=snakemake.output.judgments,
          usage_out=snakemake.output.usage,
          judge_cfg=judge_settings(snakemake), base_model_path=p.model_path, dtype=p.dtype, device=p.device)
