from emguard.stages import generate_run, run_stage

p = snakemake.params
run_stage(snakemake, generate_run, model_path=p.model_path, questions=dict(zip(p.evalsets, snakemake.input.questions)),
          out=snakemake.output[0], run_id=p.run_id, generation=p.generation, dtype=p.dtype, device=p.device,
          adapter=snakemake.input.adapter, checkpoint=p.checkpoint)
