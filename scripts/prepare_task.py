from emguard.stages import prepare_task, run_stage

p = snakemake.params
run_stage(snakemake, prepare_task, out=snakemake.output[0], task=snakemake.wildcards.task, seed=p.seed,
          holdout_fraction=p.holdout_fraction, **p.source)
