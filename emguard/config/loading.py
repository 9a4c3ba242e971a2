"""Loading a config: read it (a dict or a YAML file), validate it against
``workflow/schemas/config.schema.yaml`` (errors name the dotted key), fill the defaults and run the semantic
checks (:mod:`emguard.config.checks`, :mod:`emguard.config.rl`).
"""

from __future__ import annotations

from pathlib import Path

import yaml

from emguard.config.checks import _check_generation, _check_judge, _check_models, _check_semantics
from emguard.config.defaults import DEFAULTS, SCHEMA_PATH, _merge
from emguard.config.rl import _check_rl
from emguard.errors import ConfigError


def _dotted(path) -> str:
    return ".".join(str(p) for p in path) or "<root>"


def schema_errors(config: dict, schema_path: Path = SCHEMA_PATH) -> list[str]:
    """All schema violations of ``config``, each naming the offending dotted key."""
    import jsonschema

    schema = yaml.safe_load(schema_path.read_text())
    validator = jsonschema.Draft202012Validator(schema)
    messages = []
    for err in sorted(validator.iter_errors(config), key=lambda e: list(map(str, e.absolute_path))):
        path = list(err.absolute_path)
        if err.validator == "additionalProperties" and isinstance(err.instance, dict):
            allowed = set(err.schema.get("properties", {}))
            for extra in sorted(set(err.instance) - allowed):
                hint = f" (allowed: {', '.join(sorted(allowed))})" if allowed else ""
                messages.append(f"config key '{_dotted(path + [extra])}': unknown key{hint}")
            continue
        message = err.message
        if err.validator == "oneOf" and err.schema.get("description"):
            # "is not valid under any of the given schemas" alone does not say what is; the key's description does
            message += f" (expected {err.schema['description']})"
        messages.append(f"config key '{_dotted(path)}': {message}{_model_named(config, path)}")
    return messages


def _model_named(config: dict, path: list) -> str:
    """`` (model 'x')`` for a key inside ``models.<i>`` whose item has a name, so an error names the model too."""
    if len(path) < 2 or path[0] != "models" or not isinstance(path[1], int):
        return ""
    items = config.get("models")
    item = items[path[1]] if isinstance(items, list) and path[1] < len(items) else None
    name = item.get("name") if isinstance(item, dict) else None
    return f" (model {name!r})" if isinstance(name, str) else ""


def load(config: dict | str | Path) -> dict:
    """Validate ``config`` (a dict or a YAML path), fill defaults, run semantic checks; return a new dict."""
    if not isinstance(config, dict):
        path = Path(config)
        try:
            config = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML ({exc})") from exc
    errors = schema_errors(config)
    if errors:
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(errors))
    cfg = _merge(DEFAULTS, config)
    _check_models(config, cfg)
    _check_judge(config.get("judge") or {}, cfg)
    _check_generation(cfg)
    # The pool is scored at the length the model is trained at unless set: its NLLs then see the same (untruncated)
    # answers training does. Resolved here, so the pool_nll rule's params (and its reruns) follow training.max_length.
    if cfg["interleave"]["max_length"] is None:
        cfg["interleave"]["max_length"] = cfg["training"]["max_length"]
    _check_semantics(cfg)
    _check_rl(cfg, config.get("rl") or {})
    return cfg
