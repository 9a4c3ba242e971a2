"""The RL setting (issue 13): GRPO on math problems with the SFT defenses as interventions. :class:`RLRun` and
:func:`expand_rl_runs` (its grid), the judge of the judge-graded reward (:func:`rl_judge_settings`) and the rl
section's checks (:func:`_check_rl`, run by :func:`emguard.config.load`). Its defaults are
``DEFAULTS["rl"]`` (:mod:`emguard.config.defaults`).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path

from emguard.config.checks import _check_persona_layer
from emguard.config.defaults import (JUDGE_RUNTIME_KEYS, PROJECT_ROOT, RL_INTERLEAVE_VARIANTS, RL_JUDGE_REWARD,
                                     RL_PLAIN, RL_UNTRAINED)
from emguard.config.grids import METHOD_GRIDS
from emguard.config.runs import _model_methods, models, rl_scored
from emguard.errors import ConfigError


@dataclass(frozen=True)
class RLRun:
    """One GRPO run (or the untrained model's evaluation) of the RL setting and where its outputs live:
    ``results/rl/<model>/<method>/<setting>/seed<seed>/``. ``method``: ``grpo`` (plain GRPO), an SFT method of
    ``rl.methods`` with that method's setting ids (``kl`` / ``lambda0.1`` trains with beta 0.1, ``persona`` /
    ``alpha5``, ``interleave_random`` / ``frac0.25``, ``inoculation`` / ``default``) or ``untrained``."""

    model: str
    method: str
    setting: str
    seed: int
    hparams: dict = field(default_factory=dict, compare=False, hash=False)

    @property
    def run_id(self) -> str:
        return f"rl/{self.model}/{self.method}/{self.setting}/seed{self.seed}"

    @property
    def path(self) -> str:
        return f"results/{self.run_id}"

    @property
    def trained(self) -> bool:
        return self.method != RL_UNTRAINED


def expand_rl_runs(cfg: dict) -> list[RLRun]:
    """Every run of the RL setting, none when ``rl.enabled`` is false: the untrained model's evaluation (once,
    at the first seed, when the evaluation decodes greedily, ``rl.eval.temperature`` 0, so every seed would give
    the same answers; else once per seed), then per seed of ``experiments.seeds`` plain GRPO and every grid value
    of ``rl.methods`` (the grids of :data:`METHOD_GRIDS`, as in SFT)."""
    rl = cfg["rl"]
    if not rl["enabled"]:
        return []
    seeds = list(cfg["experiments"]["seeds"])
    untrained_seeds = seeds if rl["eval"]["temperature"] > 0 else seeds[:1]
    runs: list[RLRun] = []
    for model_cfg in models(cfg):  # several base models: every run once per model
        model, methods = model_cfg["name"], _model_methods(rl["methods"], model_cfg)
        runs += [RLRun(model, RL_UNTRAINED, "default", s) for s in untrained_seeds]
        for seed in seeds:
            runs.append(RLRun(model, RL_PLAIN, "default", seed))
            for method, spec in methods.items():
                runs += [RLRun(model, name, setting, seed, hparams=hp)
                         for name, setting, hp in METHOD_GRIDS[method](spec, cfg)]
    return runs


def find_rl_run(runs: list[RLRun], method: str, setting: str, seed: int | str, model: str | None = None) -> RLRun:
    """The RL run with these descriptors (of ``model``; None: the first model's)."""
    for r in runs:
        if (r.method, r.setting, r.seed) == (method, setting, int(seed)) and model in (None, r.model):
            return r
    where = f"{model}/" if model else ""
    raise KeyError(f"no RL run {where}{method}/{setting}/seed{seed} in the config")


def is_local_source(value: str) -> bool:
    """Whether a data source names a local file (by its suffix or a leading ``.`` / ``/``) rather than a hub id."""
    return Path(value).suffix.lower() in (".jsonl", ".json", ".parquet", ".csv") or value.startswith((".", "/"))


def rl_judge_settings(cfg: dict) -> dict | None:
    """The judge of the judge-graded GRPO reward (``rl.rewards.judge_correct``), as the judge section with
    ``rl.judge_reward.model`` in place of ``judge.model`` (``from_questions``: ``judge.default_model``); None when
    the reward is off. Only the keys that change a verdict (not the cache, retry or price keys:
    :data:`JUDGE_RUNTIME_KEYS`), so it can be a rule's params."""
    rl = cfg["rl"]
    if RL_JUDGE_REWARD not in rl["rewards"]:
        return None
    judge = {k: v for k, v in cfg["judge"].items() if k not in (*JUDGE_RUNTIME_KEYS, "calibration")}
    model = rl["judge_reward"]["model"] or judge["model"]
    if model == "from_questions":
        model = judge.get("default_model")
    return {**judge, "model": model}


def _check_rl_judge(cfg: dict) -> None:
    """rl.rewards.judge_correct: a judge the backend can build, a prompt that fills, no Batch API."""
    rl, judge = cfg["rl"], cfg["judge"]
    if set(rl["rewards"]) == {RL_JUDGE_REWARD}:
        raise ConfigError("config key 'rl.rewards': judge_correct alone; list the rule-based rewards too, with "
                          "weight 0 to train on the judge only (their curves and the accuracy stay in the log)")
    settings = rl_judge_settings(cfg)
    model_key = "rl.judge_reward.model" if rl["judge_reward"]["model"] else "judge.model"
    if not settings["model"]:
        raise ConfigError("config key 'rl.judge_reward.model': the judge-graded reward (rl.rewards.judge_correct) "
                          "needs a judge model; judge.model is from_questions and judge.default_model is not set")
    if judge["backend"] == "openai":
        if settings["model"] == "base":
            raise ConfigError(f"config key '{model_key}': the judge-graded reward (rl.rewards.judge_correct) with "
                              f"judge.backend openai needs the served model's name; 'base' (the pipeline's base "
                              f"model) is loaded by the hf backend only")
        if judge.get("mode") == "batch":
            raise ConfigError("config key 'judge.mode': batch (the Batch API, answers within 24 h) cannot grade "
                              "GRPO rollouts, which every step waits for; use logprobs or sampling, or leave "
                              "judge_correct out of rl.rewards")
    template = rl["judge_reward"]["template"]
    if template is not None:
        path = Path(template) if Path(template).exists() else PROJECT_ROOT / template
        if not path.is_file():
            raise ConfigError(f"config key 'rl.judge_reward.template': file {template} not found (a text file with "
                              f"the grading prompt, holding {{question}} and {{answer}})")
        from emguard.data.questions import template_problem

        problem = template_problem(path.read_text(encoding="utf-8"))
        if problem:
            raise ConfigError(f"config key 'rl.judge_reward.template': {template}: {problem}")


def _check_rl(cfg: dict, given: dict) -> None:
    """The rl section's checks a schema cannot express; rl.training.lora defaults to training.lora, and a given
    rl.rewards replaces the default weights (a reward left out is not computed). Runs whether or not rl.enabled is
    set, so a switched-off section is still a valid one to switch on, except for the checks against the model
    (the persona steering layer, the vector file), made only when rl.enabled is set."""
    rl = cfg["rl"]
    if "rewards" in given:
        rl["rewards"] = dict(given["rewards"])
    if "lora" not in rl["training"]:
        rl["training"]["lora"] = copy.deepcopy(cfg["training"]["lora"])
    tr = rl["training"]
    if (tr["batch_size"] * tr["grad_accum"]) % tr["num_generations"]:
        raise ConfigError(f"config key 'rl.training.num_generations': batch_size * grad_accum = "
                          f"{tr['batch_size'] * tr['grad_accum']} completions per step must hold whole groups of "
                          f"{tr['num_generations']} (one prompt's completions)")
    if not any(float(w) for w in rl["rewards"].values()):
        raise ConfigError("config key 'rl.rewards': every reward weight is 0, so GRPO has nothing to learn from")
    if RL_JUDGE_REWARD in rl["rewards"]:
        _check_rl_judge(cfg)
    problems = rl["problems"]
    if problems["source"] == "generated" and problems["eval_source"] is not None:
        raise ConfigError("config key 'rl.problems.eval_source': generated problems hold out more generated ones; "
                          "an eval_source applies to a GSM8K source (file or hub id)")
    for key in ("source", "eval_source"):
        value = problems[key]
        if value is None or value == "generated":
            continue
        if is_local_source(value) and not Path(value).exists() and not (PROJECT_ROOT / value).exists():
            raise ConfigError(f"config key 'rl.problems.{key}': file {value} not found (give generated, a local "
                              f".jsonl / .json / .parquet / .csv file in GSM8K's schema, or a hub id)")
    methods = rl["methods"]
    if "ldifs" in methods:
        raise ConfigError("config key 'rl.methods.ldifs': LDIFS is not available under GRPO (emguard.training.grpo takes "
                          "persona steering, KL, interleaving and inoculation); remove it from rl.methods")
    if "kl" in methods:
        if methods["kl"].get("direction", "reverse") != "reverse":
            raise ConfigError("config key 'rl.methods.kl.direction': GRPO's KL is trl's estimate of "
                              "KL(pi_theta || pi_ref), the reverse direction only")
        if tr["beta"] > 0:
            raise ConfigError(f"config key 'rl.methods.kl': rl.training.beta is {tr['beta']} (a KL term in every "
                              f"run); the kl method's grid sets beta per run, so set rl.training.beta to 0")
    if rl_scored(cfg) and "misaligned" not in cfg["experiments"]["baselines"]:
        raise ConfigError("config key 'rl.methods.interleave.variants': plus/plusplus score the pool with the EM "
                          "domains' misaligned adapters; experiments.baselines has no 'misaligned'")
    for i, variant in enumerate(methods.get("interleave", {}).get("variants", [])):
        if variant not in RL_INTERLEAVE_VARIANTS:
            raise ConfigError(f"config key 'rl.methods.interleave.variants.{i}': {variant!r} is not available under "
                              f"rl, on purpose: the paper's RL runs (Table 9) interleave pool data as it is, and "
                              f"onpolicy answers the pool with the model of an SFT target domain, which an RL run "
                              f"has not; use random, plus or plusplus (docs/deviations.md, GRPO)")
    persona = methods.get("persona")
    # checked against the model and the files only for planned runs: a switched-off section may keep the embedded
    # model's layer while a config runs another model
    if persona and rl["enabled"]:
        for i, model in enumerate(models(cfg)):
            _check_persona_layer(cfg, i, model, "rl.methods.persona", persona["steering_layer"])
        vectors = persona.get("vectors")
        if vectors and not Path(vectors).exists() and not (PROJECT_ROOT / vectors).exists():
            raise ConfigError(f"config key 'rl.methods.persona.vectors': persona vector file {vectors} not found")
