from emguard.stages import prepare_model, run_stage

run_stage(snakemake, prepare_model, source=snakemake.params.source, out_dir=snakemake.output[0],
          download_dir="resources/downloads")
