from pathlib import Path

from emguard.stages import evaluate_grpo_run, rl_judge_config, run_stage

p, i, o = snakemake.params, snakemake.input, snakemake.output
run_stage(snakemake, evaluate_grpo_run, model_path=p.model_path, problems_path=i.problems, answers_out=o.answers,
          metrics_out=o.metrics, run_info=p.run_info, evaluation=p.evaluation, rewards=p.rewards, dtype=p.dtype,
          device=p.device, run_dir=str(Path(i.meta).parent) if i.get("meta") else None,
          judge=rl_judge_config(snakemake.config["judge"], p.judge), judge_template=i.get("judge_template"))
