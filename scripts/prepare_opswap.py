from emguard.stages import prepare_opswap, run_stage

p = snakemake.params
run_stage(snakemake, prepare_opswap, out=snakemake.output[0], tier=int(snakemake.wildcards.tier), n=p.n, seed=p.seed,
          holdout_fraction=p.holdout_fraction, state_rules=p.state_rules)
