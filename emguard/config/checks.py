"""The semantic checks :func:`emguard.config.load` runs after the schema, for what a schema cannot express (layers
inside the model, domains that exist, files that exist, keys of one backend only); every error names the dotted
config key. Some fill in defaults that depend on other keys (per-model defaults, a backend's defaults). The rl
section's checks are :mod:`emguard.config.rl`'s; the checkpoints section's are :mod:`emguard.checkpoints`' (imported
when called: it imports this package).
"""

from __future__ import annotations

from pathlib import Path

from emguard.config.datasets import is_opswap
from emguard.config.defaults import (BENIGN_TASKS, DEFAULTS, HF_JUDGE_KEYS, OPENAI_JUDGE_DEFAULTS, PROJECT_ROOT,
                                     VLLM_GENERATION_DEFAULTS, _merge)
from emguard.config.grids import LDIFS_DEFAULTS, ldifs_setting_suffix, ldifs_variants
from emguard.config.runs import lr_setting, model_key, models
from emguard.errors import ConfigError


def _check_models(given: dict, cfg: dict) -> None:
    """Exactly one of ``model`` / ``models``; several models: names unique (the ``{model}`` part of every result path),
    defaults filled per model, and no setting that holds for one model only (a judge that is the base model, one
    persona vector file)."""
    if ("model" in given) == ("models" in given):
        raise ConfigError("config key 'model': " + ("give model (one base model) or models (a list), not both"
                                                     if "model" in given else
                                                     "missing: give model (one base model) or models (a list)"))
    if "models" not in given:
        return
    cfg.pop("model", None)  # DEFAULTS' dtype / device only
    cfg["models"] = [_merge(DEFAULTS["model"], m) for m in given["models"]]
    seen: dict[str, int] = {}
    for i, m in enumerate(cfg["models"]):
        if m["name"] in seen:
            raise ConfigError(f"config key 'models.{i}.name': {m['name']!r} is also the name of "
                              f"models.{seen[m['name']]}; each model needs its own (it names the model's result "
                              f"folders)")
        seen[m["name"]] = i
    if len(cfg["models"]) < 2:
        return
    if cfg["judge"].get("model", "base") == "base":
        raise ConfigError(f"config key 'judge.model': 'base' is the base model judging its own answers; with "
                          f"{len(cfg['models'])} models each would be judged by another judge. Name one judge for all "
                          f"(a hub id with judge.backend hf, or an API model)")
    sections = (("experiments.methods.persona", ((given.get("experiments") or {}).get("methods") or {}).get("persona")),
                ("rl.methods.persona", ((given.get("rl") or {}).get("methods") or {}).get("persona")))
    for where, persona in sections:
        if persona and persona.get("vectors"):
            raise ConfigError(f"config key '{where}.vectors': a vector file is one model's; with several models each "
                              f"model's vectors are extracted (drop the key)")


def _check_model_layers(cfg: dict) -> None:
    """Every model's steering layer (its own or a persona method's) and LDIFS layers inside its num_layers; an error
    names the key, and the model when there are several."""
    methods = cfg["experiments"]["methods"]
    for i, model in enumerate(models(cfg)):
        n_layers = model.get("num_layers")
        if model.get("steering_layer") is not None and n_layers and not 1 <= model["steering_layer"] <= n_layers:
            raise ConfigError(f"config key '{model_key(cfg, i)}.steering_layer': {model['steering_layer']} is outside "
                              f"the model's layers 1..{n_layers}")
        if not n_layers:
            continue
        if "persona" in methods:
            _check_persona_layer(cfg, i, model, "experiments.methods.persona", methods["persona"]["steering_layer"])
        if "ldifs" in methods:
            try:
                _check_ldifs(methods["ldifs"], n_layers)
            except ConfigError as exc:
                raise ConfigError(f"{exc}{_which_model(cfg, i, model)}") from None
    if "ldifs" in methods and not any(m.get("num_layers") for m in models(cfg)):
        _check_ldifs(methods["ldifs"], None)


def _which_model(cfg: dict, index: int, model: dict) -> str:
    """`` (model 'x', models.<i>)`` after an error about one of several models; nothing with one model."""
    return f" (model {model['name']!r}, {model_key(cfg, index)})" if "models" in cfg else ""


def _check_persona_layer(cfg: dict, index: int, model: dict, section: str, layer: int) -> None:
    """A persona method section's ``steering_layer`` (``section``: its dotted key) inside the layers of the
    ``index``-th model, when that model takes it (no ``steering_layer`` of its own) and has ``num_layers``."""
    n_layers = model.get("num_layers")
    if model.get("steering_layer") is None and n_layers and not 1 <= layer <= n_layers:
        raise ConfigError(f"config key '{section}.steering_layer': {layer} is outside the model's layers "
                          f"1..{n_layers}{_which_model(cfg, index, model)}")


def _check_judge(given: dict, cfg: dict) -> None:
    """Backend-specific judge keys: openai keys refused for hf (and hf keys for openai), openai defaults filled."""
    backend = cfg["judge"]["backend"]
    if backend == "openai":
        for key in HF_JUDGE_KEYS:
            if key in given and given[key] not in ("", "full"):
                raise ConfigError(f"config key 'judge.{key}': applies to judge.backend hf only, not openai")
        if cfg["judge"]["model"] == "base":
            raise ConfigError("config key 'judge.model': backend openai needs the served model's name (e.g. "
                              "gpt-4o-mini); 'base' means the pipeline's base model, which only the hf backend loads")
        cfg["judge"] = {**OPENAI_JUDGE_DEFAULTS, **cfg["judge"]}
        if cfg["judge"]["mode"] == "batch" and not cfg["judge"].get("cache"):
            raise ConfigError("config key 'judge.cache': judge.mode batch keeps its batch ids in the judge cache")
    else:
        for key in OPENAI_JUDGE_DEFAULTS:
            if key in given:
                raise ConfigError(f"config key 'judge.{key}': applies to judge.backend openai only, not {backend}")


def _check_generation(cfg: dict) -> None:
    """vLLM settings only with ``generation.backend: vllm`` (then defaulted); the vllm import itself is checked
    when a generation job starts (emguard.generate_vllm.require_vllm), never here: planning needs no vllm."""
    gen = cfg["generation"]
    if gen["backend"] == "vllm":
        gen["vllm"] = {**VLLM_GENERATION_DEFAULTS, **(gen.get("vllm") or {})}
        rank, r = gen["vllm"]["max_lora_rank"], cfg["training"]["lora"]["r"]
        if rank is not None and rank < r:
            raise ConfigError(f"config key 'generation.vllm.max_lora_rank': {rank} is below training.lora.r = {r}; "
                              f"vLLM refuses adapters of a higher rank (null picks the smallest rank >= r)")
    elif "vllm" in gen:
        raise ConfigError(f"config key 'generation.vllm': applies to generation.backend vllm only, not {gen['backend']}")


def _check_monitor(cfg: dict) -> None:
    mon = cfg["monitor"]
    if mon["stop"] is not None and not mon["enabled"]:
        raise ConfigError("config key 'monitor.stop': needs monitor.enabled: true")
    if mon["stop"] is not None and (cfg["checkpoints"]["every"] or cfg["checkpoints"]["steps"]):
        raise ConfigError("config key 'monitor.stop': a run the monitor stops has no checkpoints after its stop, "
                          "which checkpoint evaluation plans; to compare the monitor with the judged EM onset, keep "
                          "stop null (results/tables/monitor.md gives the step where it would have stopped)")
    if mon["stop"] == "calibrated" and "aligned" not in cfg["experiments"]["baselines"]:
        raise ConfigError("config key 'monitor.stop': calibrated thresholds come from the aligned runs; "
                          "experiments.baselines has no 'aligned'")
    if isinstance(mon["stop"], dict) and mon["stop"].get("persona_proj") is not None and not mon["persona"]:
        raise ConfigError("config key 'monitor.stop.persona_proj': needs monitor.persona: true")


def _check_semantics(cfg: dict) -> None:
    domains = cfg["data"]["em"]["domains"]
    for i, d in enumerate(cfg["experiments"]["target_domains"]):
        if d not in domains:
            raise ConfigError(f"config key 'experiments.target_domains.{i}': {d!r} is not in data.em.domains {domains}")
    chosen = cfg["experiments"]["baseline_domains"]
    for i, d in enumerate(chosen or []):
        if d not in domains:
            raise ConfigError(f"config key 'experiments.baseline_domains.{i}': {d!r} is not in data.em.domains {domains}")
    if chosen is not None and {"aligned", "misaligned"} & set(cfg["experiments"]["baselines"]):
        missing = [d for d in cfg["experiments"]["target_domains"] if d not in chosen]
        if missing:
            raise ConfigError(f"config key 'experiments.baseline_domains': target domain {missing[0]!r} needs its "
                              f"aligned / misaligned baselines (the EM table compares every defense with them)")
    for i, d in enumerate(domains):
        if is_opswap(d):
            raise ConfigError(f"config key 'data.em.domains.{i}': {d!r} is reserved for OpSwap datasets "
                              f"(data.opswap.tiers)")
        if d in BENIGN_TASKS:
            raise ConfigError(f"config key 'data.em.domains.{i}': {d!r} is reserved for the benign task of that name "
                              f"(data.tasks)")
    for d in cfg["data"]["em"]["sources"]:
        if d not in domains:
            raise ConfigError(f"config key 'data.em.sources.{d}': {d!r} is not in data.em.domains {domains}")
    pool = cfg["data"]["pool"]
    if pool.get("wildguardmix") and pool["source"] == "embedded":
        raise ConfigError("config key 'data.pool.wildguardmix': filters a WildGuardMix source, but data.pool.source "
                          "is 'embedded' (set it to allenai/wildguardmix or a local file, or drop the filter)")
    _check_questions(cfg)
    _check_tasks(cfg)
    _check_learning_rates(cfg)
    methods = cfg["experiments"]["methods"]
    _check_model_layers(cfg)
    vectors = methods.get("persona", {}).get("vectors")
    if vectors and not Path(vectors).exists():
        raise ConfigError(f"config key 'experiments.methods.persona.vectors': persona vector file {vectors} not found")
    probes = cfg["probes"]
    if not probes["general"] and not (probes["domains"] and domains):
        raise ConfigError("config key 'probes': no probe set (probes.general is empty and probes.domains is off or "
                          "there is no EM domain); the judge-free EM measure needs at least one")
    if probes["general"] and not any(p.exists() for p in (Path(probes["general"]), PROJECT_ROOT / probes["general"])):
        raise ConfigError(f"config key 'probes.general': probe file {probes['general']} not found")
    variants = set(methods.get("interleave", {}).get("variants", []))
    if variants & {"plus", "plusplus"} and len(domains) < 2:
        raise ConfigError("config key 'experiments.methods.interleave.variants': plus/plusplus score the pool with "
                          "adapters trained on the other EM domains (leave-one-out), so data.em.domains needs >= 2")
    if variants & {"plus", "plusplus"} and "misaligned" not in cfg["experiments"]["baselines"]:
        raise ConfigError("config key 'experiments.baselines': plus/plusplus reuse the misaligned baseline adapters "
                          "of the other domains; add 'misaligned'")
    from emguard.checkpoints import check_config as check_checkpoints

    check_checkpoints(cfg)
    _check_monitor(cfg)


def _check_learning_rates(cfg: dict) -> None:
    """Rates of the grid must tag distinct settings (``fmt_value`` keeps 6 significant digits)."""
    seen: dict[str, int] = {}
    for i, lr in enumerate(cfg["experiments"]["learning_rates"] or []):
        tag = lr_setting("default", lr)
        if tag in seen:
            raise ConfigError(f"config key 'experiments.learning_rates.{i}': {lr!r} reads as {tag}, as entry "
                              f"{seen[tag]} does; give rates that differ in their first 6 significant digits")
        seen[tag] = i


def _check_tasks(cfg: dict) -> None:
    """A selected task's local source file must exist (a hub id is only checked when loaded)."""
    for task in cfg["data"]["tasks"]:
        for key in ("source", "eval_source"):
            value = cfg["data"][task][key]
            if value is None:
                continue
            looks_local = Path(value).suffix.lower() in (".jsonl", ".json", ".parquet", ".csv") or \
                value.startswith((".", "/"))
            if looks_local and not Path(value).exists() and not (PROJECT_ROOT / value).exists():
                raise ConfigError(f"config key 'data.{task}.{key}': file {value} not found (give a local "
                                  f".jsonl / .json / .parquet / .csv file in the hub's schema, or a hub id)")


def _check_questions(cfg: dict) -> None:
    from emguard.data.questions import FROM_QUESTIONS, question_source

    source = cfg["eval"]["general"]["source"]
    path = question_source(source)
    if path is not None and not path.is_file():
        raise ConfigError(f"config key 'eval.general.source': question file {source} not found (give embedded, "
                          f"expanded or a question file)")
    if cfg["judge"].get("model") == FROM_QUESTIONS and path is None:
        raise ConfigError(f"config key 'judge.model': {FROM_QUESTIONS} uses each question's own judge, but "
                          f"eval.general.source is embedded (its questions name no judge); use a question file")
    if cfg["judge"].get("model") == FROM_QUESTIONS and not cfg["judge"].get("default_model"):
        raise ConfigError(f"config key 'judge.default_model': needed with judge.model {FROM_QUESTIONS}: the built-in "
                          f"in-domain sets, persona extraction and the judge calibration name no judge of their own")


def _check_ldifs(spec: dict, n_layers: int | None) -> None:
    raw_variants = spec.get("variants") or [{}]
    seen: dict[str, str] = {}
    for (where, v), raw in zip(ldifs_variants(spec), raw_variants):
        if v["ldifs_layers"] and (v["layer_step"] != LDIFS_DEFAULTS["layer_step"] or v["final_layer"]):
            raise ConfigError(f"config key '{where}': ldifs_layers lists the layers, so layer_step / final_layer "
                              f"do not apply; set one or the other")
        if n_layers:
            layers_key = where if "ldifs_layers" in raw else "experiments.methods.ldifs"
            for i, layer in enumerate(v["ldifs_layers"] or []):
                if layer > n_layers:
                    raise ConfigError(f"config key '{layers_key}.ldifs_layers.{i}': {layer} is outside the model's "
                                      f"layers 1..{n_layers}")
            if not v["ldifs_layers"] and v["layer_step"] > n_layers and not v["final_layer"]:
                raise ConfigError(f"config key '{where}.layer_step': {v['layer_step']} is larger than the model's "
                                  f"{n_layers} layers, so it selects no layer (or set final_layer: true)")
        suffix = ldifs_setting_suffix(v)
        if suffix in seen:
            raise ConfigError(f"config key '{where}': the same LDIFS settings as '{seen[suffix]}' (setting "
                              f"lambda<v>{suffix}); each variant must differ")
        seen[suffix] = where
