from emguard.stages import metrics_run, run_stage

run_stage(snakemake, metrics_run, judgments=dict(snakemake.input.items()), out=snakemake.output[0],
          run_info=snakemake.params.run_info, thresholds=snakemake.params.thresholds)
