from emguard.stages import rl_report, run_stage

p, o = snakemake.params, snakemake.output
run_stage(snakemake, rl_report, table_md=o.table_md, table_csv=o.table_csv, figure=o.figure, enabled=p.enabled,
          metrics_paths=list(snakemake.input.metrics), runs=p.runs, confidence=p.confidence)
