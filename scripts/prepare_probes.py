from emguard.stages import prepare_probes, run_stage

p = snakemake.params
run_stage(snakemake, prepare_probes, out=snakemake.output[0], em_paths=p.em_paths, general=p.general,
          domains=p.domains, max_per_domain=p.max_per_domain, training_paths=p.training_paths,
          whole_paths=p.whole_paths,
          general_per_category=p.general_per_category)
