from pathlib import Path

from emguard.stages import run_stage, train_run

p = snakemake.params
run_stage(snakemake, train_run, model_path=p.model_path, train_path=snakemake.input.data,
          out_dir=str(Path(snakemake.output.log).parent), subset=p.subset, training=p.training,
          seed=int(snakemake.wildcards.seed), dtype=snakemake.params.dtype,
          device=snakemake.params.device, method=p.method, hparams=p.hparams,
          persona_vectors=snakemake.input.get("persona_vectors"), monitor=p.monitor,
          dataset=snakemake.wildcards.dataset, probes_path=snakemake.input.probes,
          monitor_vectors=snakemake.input.get("monitor_vectors"), persona_layer=p.persona_layer,
          monitor_thresholds=snakemake.input.get("monitor_thresholds"))
