from emguard.stages import checkpoint_questions, run_stage

run_stage(snakemake, checkpoint_questions, questions_path=snakemake.input[0], out=snakemake.output[0],
          samples=snakemake.params.samples)
