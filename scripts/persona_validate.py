from emguard.stages import judge_settings, persona_validate, run_stage

p = snakemake.params
run_stage(snakemake, persona_validate, model_path=p.model_path, trait_path=snakemake.input.trait,
          vectors_path=snakemake.input.vectors, out=snakemake.output[0], layer=p.layer, persona=p.persona,
          generation=p.generation, judge_cfg=judge_settings(snakemake), dtype=snakemake.params.dtype,
          device=snakemake.params.device, usage_out=snakemake.output.usage)
