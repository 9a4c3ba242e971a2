from emguard.stages import prepare_rl_problems, run_stage

p = snakemake.params
run_stage(snakemake, prepare_rl_problems, out=snakemake.output[0], n_eval=p.n_eval, **p.problems)
