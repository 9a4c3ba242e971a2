from emguard.stages import probe_nll_stage, run_stage

p, i = snakemake.params, snakemake.input
run_stage(snakemake, probe_nll_stage, model_path=p.model_path, probes_path=i.probes,
          out=snakemake.output[0], probes=p.probes, dtype=p.dtype, device=p.device,
          adapter=i.adapter[0] if i.get("adapter") else None, name=p.get("run_id"),
          persona_vectors=i.get("persona_vectors"), persona_layer=p.get("persona_layer"))
