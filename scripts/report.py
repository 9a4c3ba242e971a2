from emguard.stages import report, run_stage

o = snakemake.output
run_stage(snakemake, report, metrics_paths=list(snakemake.input.metrics), train_logs=snakemake.params.train_logs,
          table_md=o.table_md, table_csv=o.table_csv, metrics_out=o.metrics, figure_em=o.figure_em,
          figure_loss=o.figure_loss)
