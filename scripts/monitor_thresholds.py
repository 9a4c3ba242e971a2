from emguard.stages import monitor_thresholds_stage, run_stage

p = snakemake.params
run_stage(snakemake, monitor_thresholds_stage, logs=p.logs, out=snakemake.output[0], margin=p.margin,
          quantile=p.quantile)
