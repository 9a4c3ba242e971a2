"""One function per pipeline stage: plain paths and values in, files out.

The Snakemake scripts under ``scripts/`` only unpack ``snakemake.input/output/params`` and call one of
these, so every stage runs (and is tested) without Snakemake. Every output is written atomically.

One module per stage family: :mod:`.common` (:func:`run_stage`, which sends a stage's logging to its rule's log,
and the helpers several families share), :mod:`.prepare` (the model and the data), :mod:`.train` (fine-tuning
runs, the monitor's thresholds), :mod:`.evaluation` (answers, judgments, the judge's calibration, metrics),
:mod:`.interleaving`, :mod:`.probes` (the judge-free likelihood measure), :mod:`.persona_vectors`,
:mod:`.checkpoint_curve`, :mod:`.reporting` (the report's tables and figures) and :mod:`.rl` (the RL setting).
Every stage is re-exported here, so scripts write ``from emguard.stages import run_stage, train_run``. Each rule's
``code`` hash (:mod:`emguard.codeversion`) covers only the stage functions its script reaches, across these
modules, with the top-level statements of the modules they live in; a new module here is a stage module too.
Nothing here imports torch at import time: the Snakefile and the light jobs import this package.
"""

from emguard.stages.checkpoint_curve import adapter_signals_stage, checkpoint_curve_stage, checkpoint_questions
from emguard.stages.common import read_question_sets, run_stage, sampling_settings
from emguard.stages.evaluation import (generate_model_vllm, generate_run, judge_calibration_stage, judge_run,
                                       judge_settings, metrics_run, task_metrics_run)
from emguard.stages.interleaving import (interleave_count, interleave_set_stage, onpolicy_answers_stage,
                                         pool_nll_stage, score_pool_stage)
from emguard.stages.persona_vectors import persona_extract, persona_validate
from emguard.stages.prepare import (prepare_em, prepare_general_questions, prepare_indomain_questions,
                                    prepare_model, prepare_opswap, prepare_opswap_questions, prepare_pool,
                                    prepare_task, prepare_task_questions, training_rows)
from emguard.stages.probes import prepare_probes, probe_nll_stage, probe_shifts_stage
from emguard.stages.reporting import adversarial_report, eps_label, eps_lengths, monitor_report, report
from emguard.stages.rl import (RL_PROBLEM_COLUMNS, eval_adapter, evaluate_grpo_run, grpo_settings, judge_reward,
                               prepare_rl_problems, prune_checkpoints, rl_judge_config, rl_problems, rl_report,
                               train_grpo_run)
from emguard.stages.train import build_method, monitor_thresholds_stage, train_run, train_settings

__all__ = [
    # running a stage from a Snakemake script, and shared helpers
    "run_stage", "read_question_sets", "sampling_settings",
    # the model and the data
    "prepare_model", "prepare_em", "prepare_general_questions", "prepare_indomain_questions", "prepare_pool",
    "prepare_opswap", "prepare_opswap_questions", "prepare_task", "prepare_task_questions", "training_rows",
    # training
    "train_settings", "train_run", "build_method", "monitor_thresholds_stage",
    # generation, judging, metrics
    "generate_run", "generate_model_vllm", "judge_settings", "judge_run", "judge_calibration_stage", "metrics_run",
    "task_metrics_run",
    # interleaving
    "pool_nll_stage", "score_pool_stage", "interleave_count", "onpolicy_answers_stage", "interleave_set_stage",
    # the judge-free likelihood measure
    "prepare_probes", "probe_nll_stage", "probe_shifts_stage",
    # persona vectors
    "persona_extract", "persona_validate",
    # checkpoints
    "checkpoint_questions", "adapter_signals_stage", "checkpoint_curve_stage",
    # the report
    "monitor_report", "adversarial_report", "eps_label", "eps_lengths", "report",
    # the RL setting
    "RL_PROBLEM_COLUMNS", "prepare_rl_problems", "rl_problems", "grpo_settings", "rl_judge_config", "judge_reward",
    "train_grpo_run", "prune_checkpoints", "eval_adapter", "evaluate_grpo_run", "rl_report",
]
