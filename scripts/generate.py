from emguard.stages import generate_run, run_stage

p = snakemake.params
run_stage(snakemake, generate_run, model_path=p.model_path, questions_path=snakemake.input.questions,
          out=snakemake.output[0], run_id=p.run_id, generation=p.generation,
          dtype=snakemake.config["model"]["dtype"], device=snakemake.config["model"]["device"],
          adapter=snakemake.input.adapter[0] if snakemake.input.adapter else None)
