from emguard.stages import prepare_indomain_questions, run_stage

p = snakemake.params
run_stage(snakemake, prepare_indomain_questions, em_path=snakemake.input.em, out=snakemake.output[0],
          domain=snakemake.wildcards.domain, n_questions=p.n_questions, samples=p.samples)
