from emguard.stages import probe_shifts_stage, run_stage

p = snakemake.params
run_stage(snakemake, probe_shifts_stage, nll_paths=list(snakemake.input.nll), out_shifts=snakemake.output.shifts,
          out_summary=snakemake.output.summary, runs=p.runs, probes=p.probes, confidence=p.confidence)
