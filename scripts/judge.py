from emguard.stages import judge_run, judge_settings, run_stage

p = snakemake.params
run_stage(snakemake, judge_run, generations_path=snakemake.input.generations,
          questions_path=snakemake.input.questions, out=snakemake.output[0], judge_cfg=judge_settings(snakemake),
          base_model_path=p.model_path, dtype=snakemake.config["model"]["dtype"],
          device=snakemake.config["model"]["device"])
