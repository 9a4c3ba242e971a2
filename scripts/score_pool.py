from emguard.stages import run_stage, score_pool_stage

p = snakemake.params
run_stage(snakemake, score_pool_stage, nll_path=snakemake.input.nll, pool_path=snakemake.input.pool,
          adapters=p.adapters, out=snakemake.output[0], interleave=p.interleave)
