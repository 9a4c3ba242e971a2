from emguard.stages import run_stage, task_nll_stage

p = snakemake.params
run_stage(snakemake, task_nll_stage, model_path=p.model_path, em_path=snakemake.input.em, out=snakemake.output[0],
          subset=p.subset, batch_size=p.batch_size, max_length=p.max_length, dtype=p.dtype, device=p.device,
          adapter=snakemake.input.adapter)
