from emguard.stages import adversarial_report, run_stage

i = snakemake.input
run_stage(snakemake, adversarial_report, metrics_paths=list(i.metrics), emergence_csv=i.emergence,
          checkpoint_metrics_paths=list(i.checkpoint_metrics), out_md=snakemake.output.md,
          out_csv=snakemake.output.csv)
