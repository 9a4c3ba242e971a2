"""The experiment grid: the config's base models, :class:`Run` (one fine-tuning run, or the untrained base model,
and where its outputs live) and :func:`expand_runs` (one run per model, dataset, method, setting, seed and learning
rate), the learning-rate tags of setting ids, and which runs are trained and judged.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field

from emguard.config.datasets import leave_one_out, method_subset, opswap_dataset
from emguard.config.defaults import BASE_DATASET, RL_DATASET
from emguard.config.grids import METHOD_GRIDS, fmt_value
from emguard.errors import ConfigError


# --------------------------------------------------------------------------------------------------
# Base models: one (``model``) or several (``models``)
# --------------------------------------------------------------------------------------------------

def models(cfg: dict) -> list[dict]:
    """The config's base models in order, each a ``model`` mapping: ``models`` (several; defaults filled in by
    :func:`load`), or ``[model]`` for a config with one ``model`` mapping (that mapping itself)."""
    return list(cfg["models"]) if "models" in cfg else [cfg["model"]]


def model_key(cfg: dict, index: int) -> str:
    """The dotted config key of the ``index``-th model: ``model`` or ``models.<i>``."""
    return f"models.{index}" if "models" in cfg else "model"


def model_steering_layer(model: dict, persona: dict | None) -> int | None:
    """A model's persona steering layer: its own ``steering_layer``, else that of the method section ``persona``
    (``experiments.methods.persona`` or ``rl.methods.persona``; None when the section is absent)."""
    if model.get("steering_layer") is not None:
        return int(model["steering_layer"])
    return int(persona["steering_layer"]) if persona and persona.get("steering_layer") is not None else None


# --------------------------------------------------------------------------------------------------
# The experiment grid
# --------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Run:
    """One fine-tuning run (or the untrained base model) and where its outputs live.

    ``learning_rate`` is the rate the run trains with: ``training.learning_rate``, or its value of
    ``experiments.learning_rates``; None for the untrained model. A grid of several rates repeats every trained
    run once per rate (as ``experiments.seeds`` does) and tags the rate onto the run's ``setting``
    (:func:`lr_setting`: ``default`` -> ``lr1e-05``, ``lambda0.1`` -> ``lambda0.1_lr1e-05``), so the rate is in
    the run id and path, and every table that groups runs by setting keeps the rates apart. A single rate
    (or none: null) tags nothing, so such a config's run ids and paths are those it had before the grid existed.
    The untrained model is not repeated.
    """

    model: str
    dataset: str
    method: str
    setting: str
    seed: int
    train_subset: str | None = None          # aligned / misaligned / benign (OpSwap) / None (untrained)
    hparams: dict = field(default_factory=dict, compare=False, hash=False)
    learning_rate: float | None = None

    @property
    def run_id(self) -> str:
        return f"{self.model}/{self.dataset}/{self.method}/{self.setting}/seed{self.seed}"

    @property
    def path(self) -> str:
        return f"results/runs/{self.run_id}"

    @property
    def trained(self) -> bool:
        return self.method != "untrained"

    def training_settings(self, training: dict) -> dict:
        """The config's ``training`` section with this run's learning rate (the train rule's params): the section
        itself when the rate is the configured one, so a single-rate config's train jobs keep their params."""
        if self.learning_rate is None or self.learning_rate == training["learning_rate"]:
            return training
        return {**training, "learning_rate": self.learning_rate}


#: the tag of a learning rate in a setting id (:func:`lr_setting`)
LR_TAG = "lr"
_LR_SUFFIX = re.compile(rf"(?:^|_){LR_TAG}(\d+(?:\.\d*)?(?:e[-+]?\d+)?)$")


def learning_rates(cfg: dict) -> list[float]:
    """The learning rates every trained run is repeated over: ``experiments.learning_rates``, or
    ``[training.learning_rate]`` when that is null."""
    grid = cfg["experiments"]["learning_rates"]
    return [float(v) for v in grid] if grid else [float(cfg["training"]["learning_rate"])]


def lr_setting(setting: str, lr: float) -> str:
    """A setting id with the learning rate tagged on: ``default`` -> ``lr1e-05``, ``lambda0.1`` ->
    ``lambda0.1_lr1e-05`` (:func:`fmt_value` of the rate). Used only when the grid has several rates."""
    tag = f"{LR_TAG}{fmt_value(float(lr))}"
    return tag if setting == "default" else f"{setting}_{tag}"


def setting_lr(setting: str) -> float | None:
    """The learning rate a setting id carries (:func:`lr_setting`), or None: a config with one learning rate (the
    rate is then ``training.learning_rate`` or the grid's only value) and the untrained model tag none."""
    m = _LR_SUFFIX.search(str(setting))
    return float(m.group(1)) if m else None


#: runs answered and judged under ``eval.judged: baselines``
JUDGED_BASELINES = ("untrained", "aligned", "misaligned")


def is_judged(run: "Run", cfg: dict) -> bool:
    """Whether an EM run's answers are generated and judged (``eval.judged``: true, false or ``baselines``).

    ``baselines``: the untrained model and the aligned / misaligned runs of :func:`baseline_domains`. A misaligned
    run of another domain, trained only because Interleaving+ / ++ scores the pool with it
    (:func:`scoring_domains`), is no baseline of the comparison: it keeps its likelihood measure and is not
    answered or judged."""
    judged = cfg["eval"]["judged"]
    if judged is True:
        return True
    if judged != "baselines" or run.method not in JUDGED_BASELINES:
        return False
    return not run.trained or run.dataset in baseline_domains(cfg)


def baseline_domains(cfg: dict) -> list[str]:
    """The EM domains whose aligned / misaligned baselines are trained: ``experiments.baseline_domains``, or
    every domain of ``data.em.domains`` when it is null. The others still give probe triples and questions, and
    their misaligned baselines are trained where Interleaving+ / ++ scores the pool with them
    (:func:`scoring_domains`)."""
    chosen = cfg["experiments"]["baseline_domains"]
    return list(cfg["data"]["em"]["domains"] if chosen is None else chosen)


def rl_scored(cfg: dict) -> bool:
    """Whether the RL setting runs Interleaving+ / ++ (the pool scored for :data:`RL_DATASET`)."""
    rl = cfg.get("rl") or {}
    variants = set(((rl.get("methods") or {}).get("interleave") or {}).get("variants") or ())
    return bool(rl.get("enabled")) and bool(variants & {"plus", "plusplus"})


def scoring_domains(cfg: dict) -> list[str]:
    """The EM domains whose misaligned adapters score the interleaving pool (Interleaving+ / ++: every domain but
    the target, for each target the variants run on): their misaligned baselines are trained whatever
    ``experiments.baseline_domains`` says."""
    variants = set((cfg["experiments"]["methods"].get("interleave") or {}).get("variants") or ())
    if not variants & {"plus", "plusplus"} and not rl_scored(cfg):
        return []
    targets = (list(cfg["experiments"]["target_domains"]) + [opswap_dataset(t) for t in cfg["data"]["opswap"]["tiers"]]
               + list(cfg["data"]["tasks"]))
    if rl_scored(cfg):
        targets.append(RL_DATASET)
    domains = cfg["data"]["em"]["domains"]
    return [d for d in domains if any(d in leave_one_out(domains, t) for t in targets)]


def expand_runs(cfg: dict) -> list[Run]:
    """Every run the config asks for, baselines first, in a stable order.

    Per seed: the untrained model, the aligned / misaligned SFT baselines of every EM domain (of
    ``experiments.baseline_domains`` when set), every method
    on every target domain, then for each OpSwap tier of ``data.opswap.tiers`` (dataset ``opswap_t<t>``)
    the untrained model (when ``untrained`` is a baseline: Table 3's baseline row, evaluated on that tier's
    held-out problems, no adapter), an SFT baseline (method ``sft``) and every method, all trained on the
    benign OpSwap train rows; then the same for each benign task of ``data.tasks`` (dataset ``foqa`` /
    ``gsm8k``). With several ``experiments.learning_rates``, a seed's trained runs come once per rate, in the
    grid's order, each with the rate tagged on its setting (see :class:`Run`); the untrained runs once per seed.
    With several base models (``models``) all of that once per model, in the list's order; a persona run steers at
    its model's layer (:func:`model_steering_layer`)."""
    exp = cfg["experiments"]
    rates = learning_rates(cfg)
    runs: list[Run] = []
    for model in models(cfg):
        methods = _model_methods(exp["methods"], model)
        for seed in exp["seeds"]:
            per_seed = _seed_runs(cfg, model["name"], {**exp, "methods": methods}, seed)
            # every trained run once per learning rate, in the seed's order; the untrained model once per seed
            for i, lr in enumerate(rates):
                for run in per_seed:
                    if not run.trained:
                        if i == 0:
                            runs.append(run)
                        continue
                    setting = lr_setting(run.setting, lr) if len(rates) > 1 else run.setting
                    runs.append(dataclasses.replace(run, setting=setting, learning_rate=lr))
    return runs


def _model_methods(methods: dict, model: dict) -> dict:
    """A method section (``experiments.methods``, ``rl.methods``) as it applies to one model: persona steering at the
    model's own ``steering_layer`` where it sets one."""
    if "persona" not in methods or model.get("steering_layer") is None:
        return methods
    return {**methods, "persona": {**methods["persona"], "steering_layer": model_steering_layer(model, None)}}


def _seed_runs(cfg: dict, model: str, exp: dict, seed: int) -> list[Run]:
    """One seed's runs of one model at the configured learning rate (:func:`expand_runs` repeats them over the
    grid); ``exp``: ``experiments`` with the model's ``methods``."""
    runs: list[Run] = []
    if "untrained" in exp["baselines"]:
        runs.append(Run(model, BASE_DATASET, "untrained", "default", seed))
    chosen, scoring = baseline_domains(cfg), scoring_domains(cfg)
    for domain in cfg["data"]["em"]["domains"]:
        for subset in ("aligned", "misaligned"):
            wanted = domain in chosen or (subset == "misaligned" and domain in scoring)
            if subset in exp["baselines"] and wanted:
                runs.append(Run(model, domain, subset, "default", seed, train_subset=subset))
    for domain in exp["target_domains"]:
        for method, spec in exp["methods"].items():
            runs.extend(method_runs(model, domain, method, spec, seed, cfg))
    for tier in cfg["data"]["opswap"]["tiers"]:
        dataset = opswap_dataset(tier)
        if "untrained" in exp["baselines"]:
            runs.append(Run(model, dataset, "untrained", "default", seed))
        runs.append(Run(model, dataset, "sft", "default", seed, train_subset="benign"))
        for method, spec in exp["methods"].items():
            runs.extend(method_runs(model, dataset, method, spec, seed, cfg))
    for task in cfg["data"]["tasks"]:  # benign real tasks: the same runs as an OpSwap tier
        if "untrained" in exp["baselines"]:
            runs.append(Run(model, task, "untrained", "default", seed))
        runs.append(Run(model, task, "sft", "default", seed, train_subset="benign"))
        for method, spec in exp["methods"].items():
            runs.extend(method_runs(model, task, method, spec, seed, cfg))
    return runs


def method_runs(model: str, domain: str, method: str, spec: dict, seed: int, cfg: dict) -> list[Run]:
    """The runs of one defense method's grid (filled in by the defenses in METHOD_GRIDS)."""
    grid = METHOD_GRIDS.get(method)
    if grid is None:
        raise ConfigError(f"config key 'experiments.methods.{method}': unknown method")
    return [Run(model, domain, name, setting, seed, train_subset=method_subset(domain), hparams=hp)
            for name, setting, hp in grid(spec, cfg)]


def find_run(runs: list[Run], dataset: str, method: str, setting: str, seed: int | str,
             model: str | None = None) -> Run:
    """The run with these descriptors (of ``model``; None: the first model's)."""
    for r in runs:
        if (r.dataset, r.method, r.setting, r.seed) == (dataset, method, setting, int(seed)) \
                and model in (None, r.model):
            return r
    where = f"{model}/" if model else ""
    raise KeyError(f"no run {where}{dataset}/{method}/{setting}/seed{seed} in the config")
