from emguard.stages import pool_nll_stage, run_stage

p = snakemake.params
run_stage(snakemake, pool_nll_stage, model_path=p.model_path, pool_path=snakemake.input.pool,
          adapters=p.adapters, out=snakemake.output[0], interleave=p.interleave,
          dtype=snakemake.params.dtype, device=snakemake.params.device)
