from emguard.stages import onpolicy_answers_stage, run_stage

w = snakemake.wildcards
run_stage(snakemake, onpolicy_answers_stage, model_path=snakemake.params.model_path, pool_path=snakemake.input.pool,
          em_path=snakemake.input.em, out=snakemake.output[0], fraction=float(w.frac), seed=int(w.seed),
          generation=snakemake.params.generation, dtype=snakemake.params.dtype,
          device=snakemake.params.device, subset=snakemake.params.subset)
