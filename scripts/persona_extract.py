from emguard.stages import judge_settings, persona_extract, run_stage

p = snakemake.params
run_stage(snakemake, persona_extract, model_path=p.model_path, trait_path=snakemake.input.trait,
          out_vectors=snakemake.output.vectors, out_rollouts=snakemake.output.rollouts, persona=p.persona,
          generation=p.generation, judge_cfg=judge_settings(snakemake), dtype=snakemake.params.dtype,
          device=snakemake.params.device, model_name=snakemake.wildcards.model,
          usage_out=snakemake.output.usage)
