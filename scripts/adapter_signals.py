from emguard.stages import adapter_signals_stage, run_stage

p, i = snakemake.params, snakemake.input
run_stage(snakemake, adapter_signals_stage, model_path=p.model_path, adapter=i.adapter, em_path=i.em,
          probes_path=i.probes, out_task=snakemake.output.task, out_probes=snakemake.output.probes, subset=p.subset,
          batch_size=p.batch_size, max_length=p.max_length, probes=p.probes, name=p.run_id, dtype=p.dtype,
          device=p.device, persona_vectors=i.get("persona_vectors"), persona_layer=p.get("persona_layer"))
