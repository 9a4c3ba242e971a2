"""The validated configuration and the experiment grid.

:func:`load` checks a config dict against ``workflow/schemas/config.schema.yaml`` (errors name the
dotted key), fills defaults, and runs the semantic checks a schema cannot express (layers inside the
model, domains that exist). :func:`expand_runs` turns the validated config into one :class:`Run` per
(dataset, method, setting, seed[, learning rate]): every grid value becomes its own run, and so its own DAG
branch; with several base models (``models``, :func:`models`) once per model.

Parts, one file each, torch-free (the Snakefile plans with them):

* :mod:`.defaults`: :data:`DEFAULTS` (every section, ``rl`` included), the backend-specific defaults, the keys
  kept out of rule params, reserved dataset names, :data:`PROJECT_ROOT`;
* :mod:`.loading`: :func:`load` and :func:`schema_errors`;
* :mod:`.checks`: the semantic checks :func:`load` runs (``_check_*``), each error naming the key;
* :mod:`.runs`: the base models (:func:`models`), :class:`Run`, :func:`expand_runs`, learning-rate setting tags,
  which runs are trained and judged (:func:`is_judged`, :func:`baseline_domains`, :func:`scoring_domains`);
* :mod:`.grids`: the defense methods' grids (:data:`METHOD_GRIDS`, LDIFS variants, :func:`fmt_value`);
* :mod:`.datasets`: dataset names (OpSwap tiers, benign tasks), a run's evaluation sets, :func:`leave_one_out`;
* :mod:`.rl`: the RL setting: :class:`RLRun`, :func:`expand_rl_runs`, the judge-graded reward's judge, the rl
  section's checks.

Everything callers use is re-exported here (``import emguard.config as emconfig``; ``emconfig.load(...)``).
"""

from emguard.config.defaults import (BASE_DATASET, BENIGN_TASKS, DEFAULTS, GENERATION_BACKEND_KEYS, HF_JUDGE_KEYS,
                                     JUDGE_RUNTIME_KEYS, OPENAI_JUDGE_DEFAULTS, OPSWAP_PREFIX, PROJECT_ROOT,
                                     REPORT_ONLY_METRIC_KEYS, RL_DATASET, RL_INTERLEAVE_VARIANTS, RL_JUDGE_REWARD,
                                     RL_METHODS, RL_PLAIN, RL_UNTRAINED, SCHEMA_PATH, VLLM_GENERATION_DEFAULTS)
from emguard.config.grids import (INOCULATION_PROMPT, LDIFS_DEFAULTS, METHOD_GRIDS, fmt_value, ldifs_setting_suffix,
                                  ldifs_variants)
from emguard.config.datasets import (evalsets, is_benign_task, is_opswap, is_task_dataset, leave_one_out,
                                     method_subset, opswap_dataset, question_set)
from emguard.config.runs import (JUDGED_BASELINES, LR_TAG, Run, baseline_domains, expand_runs, find_run, is_judged,
                                 learning_rates, lr_setting, method_runs, model_key, model_steering_layer, models,
                                 rl_scored, scoring_domains, setting_lr)
from emguard.config.rl import RLRun, expand_rl_runs, find_rl_run, is_local_source, rl_judge_settings
from emguard.config.loading import load, schema_errors
from emguard.errors import ConfigError

__all__ = [
    "BASE_DATASET", "BENIGN_TASKS", "DEFAULTS", "GENERATION_BACKEND_KEYS", "HF_JUDGE_KEYS", "INOCULATION_PROMPT",
    "JUDGED_BASELINES", "JUDGE_RUNTIME_KEYS", "LDIFS_DEFAULTS", "LR_TAG", "METHOD_GRIDS", "OPENAI_JUDGE_DEFAULTS",
    "OPSWAP_PREFIX", "PROJECT_ROOT", "REPORT_ONLY_METRIC_KEYS", "RL_DATASET", "RL_INTERLEAVE_VARIANTS",
    "RL_JUDGE_REWARD", "RL_METHODS", "RL_PLAIN", "RL_UNTRAINED", "SCHEMA_PATH", "VLLM_GENERATION_DEFAULTS",
    "ConfigError", "RLRun", "Run",
    "baseline_domains", "evalsets", "expand_rl_runs", "expand_runs", "find_rl_run", "find_run", "fmt_value",
    "is_benign_task", "is_judged", "is_local_source", "is_opswap", "is_task_dataset", "ldifs_setting_suffix",
    "ldifs_variants", "learning_rates", "leave_one_out", "load", "lr_setting", "method_runs", "method_subset",
    "model_key", "model_steering_layer", "models", "opswap_dataset", "question_set", "rl_judge_settings", "rl_scored",
    "schema_errors", "scoring_domains", "setting_lr",
]
