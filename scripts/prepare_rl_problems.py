from emguard.stages import run_stage
from emguard.stages_rl import prepare_rl_problems

p = snakemake.params
run_stage(snakemake, prepare_rl_problems, out=snakemake.output[0], n_eval=p.n_eval, **p.problems)
