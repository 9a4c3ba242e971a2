from emguard.stages import interleave_set_stage, run_stage

w, i = snakemake.wildcards, snakemake.input
run_stage(snakemake, interleave_set_stage, em_path=i.em, pool_path=i.pool, out=snakemake.output[0],
          variant=w.variant, fraction=float(w.frac), seed=int(w.seed), scores_path=i.get("scores"),
          answers_path=i.get("answers"), subset=snakemake.params.subset)
