from emguard.stages import monitor_report, run_stage

p = snakemake.params
i = snakemake.input
run_stage(snakemake, monitor_report, logs=p.logs, out_md=snakemake.output.md, out_csv=snakemake.output.csv,
          out_figure=snakemake.output.figure,
          monitor=p.monitor, curve_paths=list(i.curves), base_metrics=list(i.base_metrics), em_threshold=p.em_threshold)
