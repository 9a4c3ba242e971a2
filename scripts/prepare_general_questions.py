from emguard.stages import prepare_general_questions, run_stage

# judge.model is read from the config, not a param: switching judges must not regenerate every answer
run_stage(snakemake, prepare_general_questions, out=snakemake.output[0], source=snakemake.params.source,
          judge_prompts=snakemake.input.prompts, samples=snakemake.params.samples,
          formats=snakemake.params.formats, judge_model=snakemake.config["judge"]["model"])
