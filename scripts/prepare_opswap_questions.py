from emguard.stages import prepare_opswap_questions, run_stage

p = snakemake.params
run_stage(snakemake, prepare_opswap_questions, opswap_path=snakemake.input.opswap, out=snakemake.output[0],
          n_questions=p.n_questions, samples=p.samples)
