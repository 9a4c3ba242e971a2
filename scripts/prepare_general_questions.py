from emguard.stages import prepare_general_questions, run_stage

run_stage(snakemake, prepare_general_questions, out=snakemake.output[0], source=snakemake.params.source,
          samples=snakemake.params.samples,
          formats=snakemake.params.formats)
