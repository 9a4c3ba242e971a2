from emguard.stages import run_stage, task_metrics_run

i, p = snakemake.input, snakemake.params
run_stage(snakemake, task_metrics_run, generations_path=i.generations, questions_path=i.questions,
          out=snakemake.output[0], run_info=p.run_info, evalset=p.evalset, confidence=p.confidence)
