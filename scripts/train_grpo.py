from pathlib import Path

from emguard.stages import rl_judge_config, run_stage, train_grpo_run

p, i = snakemake.params, snakemake.input
run_stage(snakemake, train_grpo_run, model_path=p.model_path, problems_path=i.problems,
          out_dir=str(Path(snakemake.output.log).parent), training=p.training, rewards=p.rewards,
          seed=int(snakemake.wildcards.seed), dtype=p.dtype, device=p.device, method=p.method, hparams=p.hparams,
          persona_vectors=i.get("persona_vectors"), pool_path=i.get("pool"), scores_path=i.get("scores"),
          keep_checkpoints=p.keep_checkpoints, judge=rl_judge_config(snakemake.config["judge"], p.judge),
          judge_template=i.get("judge_template"))
