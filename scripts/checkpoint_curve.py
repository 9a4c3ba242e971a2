from emguard.stages import checkpoint_curve_stage, run_stage

i, p = snakemake.input, snakemake.params
run_stage(snakemake, checkpoint_curve_stage, meta_path=i.meta, base_nll_path=i.base_nll, out=snakemake.output[0],
          run_info=p.run_info, steps=p.steps, task_paths=list(i.task), probe_paths=list(i.probes),
          metrics_paths=list(i.get("metrics", [])), probes=p.probes, confidence=p.confidence)
