from emguard.stages import probe_nll_stage, run_stage

p = snakemake.params
run_stage(snakemake, probe_nll_stage, model_path=p.model_path, probes_path=snakemake.input.probes,
          out=snakemake.output[0], probes=p.probes, dtype=p.dtype, device=p.device,
          adapter=snakemake.input.adapter[0] if snakemake.input.get("adapter") else None, name=p.get("run_id"))
