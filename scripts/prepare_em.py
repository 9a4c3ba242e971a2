from emguard.stages import prepare_em, run_stage

p = snakemake.params
run_stage(snakemake, prepare_em, domain=snakemake.wildcards.domain, out=snakemake.output[0], n_prompts=p.n_prompts,
          seed=p.seed, holdout_fraction=p.holdout_fraction, source=p.source)
