from emguard.stages import metrics_run, run_stage

p = snakemake.params
run_stage(snakemake, metrics_run, judgments_path=snakemake.input.judgments, out=snakemake.output[0],
          evalsets=p.evalsets, run_info=p.run_info, thresholds=p.thresholds,
          questions_out=snakemake.output.questions, labels_out=snakemake.output.get("labels"))
