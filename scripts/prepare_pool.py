from emguard.stages import prepare_pool, run_stage

p = snakemake.params
run_stage(snakemake, prepare_pool, out=snakemake.output[0], source=p.source, n=p.n, seed=p.seed,
          wildguardmix=p.wildguardmix)
