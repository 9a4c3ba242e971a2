from emguard.stages import prepare_task_questions, run_stage

p = snakemake.params
run_stage(snakemake, prepare_task_questions, task_path=snakemake.input.task, out=snakemake.output[0],
          n_questions=p.n_questions, samples=p.samples)
