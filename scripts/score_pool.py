from emguard.stages import run_stage, score_pool_stage

p = snakemake.params
run_stage(snakemake, score_pool_stage, model_path=p.model_path, pool_path=snakemake.input.pool,
          adapters=p.adapters, out=snakemake.output[0], interleave=p.interleave,
          dtype=snakemake.config["model"]["dtype"], device=snakemake.config["model"]["device"])
