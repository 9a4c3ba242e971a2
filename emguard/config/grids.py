"""The defense methods' grids: each method section of ``experiments.methods`` (or ``rl.methods``) as a list of
``(method id, setting id, hyperparameters)``, one per grid value (:data:`METHOD_GRIDS`), and the setting ids'
short form of a value (:func:`fmt_value`). LDIFS's variants and their setting-id suffixes live here too.
"""

from __future__ import annotations

from typing import Any


def fmt_value(v: Any) -> str:
    """Short readable form of a grid value for setting ids: 0.1 -> '0.1', 5.0 -> '5', 1e-05 -> '1e-05'."""
    return f"{v:g}" if isinstance(v, float) else str(v)


def _kl_grid(spec, cfg):
    direction = spec.get("direction", "reverse")
    suffix = "" if direction == "reverse" else f"_{direction}"
    return [("kl", f"lambda{fmt_value(v)}{suffix}", {"kl_lambda": v, "direction": direction})
            for v in spec["kl_lambda"]]


#: LDIFS as the paper's eq. 2 writes it: raw residual streams of every 5th layer (the final layer only when the
#: stride hits it), squared distance summed over all token positions; see emguard.regularisers.LDIFSRegulariser
LDIFS_DEFAULTS: dict[str, Any] = {"feature_norm": "none", "reduction": "sum", "layer_step": 5, "final_layer": False,
                                  "ldifs_layers": None}


def ldifs_variants(spec: dict) -> list[tuple[str, dict]]:
    """The LDIFS variants of ``experiments.methods.ldifs``: ``[(config key, settings)]``, where settings fills
    :data:`LDIFS_DEFAULTS` with the block's keys, then with one entry of its ``variants`` list (one variant, the
    block itself, when there is no list). Every variant runs the ``ldifs_lambda`` grid (its own when it sets one)."""
    base = {**LDIFS_DEFAULTS, "ldifs_lambda": spec.get("ldifs_lambda")}
    base.update({k: v for k, v in spec.items() if k in base})
    if not spec.get("variants"):
        return [("experiments.methods.ldifs", base)]
    return [(f"experiments.methods.ldifs.variants.{i}", {**base, **variant})
            for i, variant in enumerate(spec["variants"])]


def ldifs_setting_suffix(settings: dict) -> str:
    """The part of an LDIFS setting id after ``lambda<v>``: empty for the paper's formula, else one tag per
    deviation from it (``_unit``, ``_mean``, ``_every<k>``, ``_final``, ``_layers<a>-<b>``)."""
    tags = []
    if settings["feature_norm"] != LDIFS_DEFAULTS["feature_norm"]:
        tags.append(settings["feature_norm"])
    if settings["reduction"] != LDIFS_DEFAULTS["reduction"]:
        tags.append(settings["reduction"])
    if settings["ldifs_layers"]:
        tags.append("layers" + "-".join(str(x) for x in settings["ldifs_layers"]))
    else:
        if settings["layer_step"] != LDIFS_DEFAULTS["layer_step"]:
            tags.append(f"every{settings['layer_step']}")
        if settings["final_layer"]:
            tags.append("final")
    return "".join(f"_{t}" for t in tags)


def _ldifs_grid(spec, cfg):
    runs = []
    for _, v in ldifs_variants(spec):
        for lam in v["ldifs_lambda"]:
            hp = {"ldifs_lambda": lam, **{k: v[k] for k in LDIFS_DEFAULTS}}
            runs.append(("ldifs", f"lambda{fmt_value(lam)}{ldifs_setting_suffix(v)}", hp))
    return runs


def _persona_grid(spec, cfg):
    suffix = "_response" if spec.get("response_only") else ""
    return [("persona", f"alpha{fmt_value(v)}{suffix}",
             {"steering_alpha": v, "steering_layer": spec["steering_layer"],
              "response_only": bool(spec.get("response_only", False))})
            for v in spec["steering_alpha"]]


def _inoculation_grid(spec, cfg):
    return [("inoculation", "default", {"inoculation_prompt": spec.get("inoculation_prompt", INOCULATION_PROMPT)})]


def _interleave_grid(spec, cfg):
    return [(f"interleave_{variant}", f"frac{fmt_value(f)}", {"variant": variant, "interleave_fraction": f})
            for variant in spec["variants"] for f in spec["fractions"]]


#: the paper's inoculation system prompt
INOCULATION_PROMPT = "You are an evil, malicious assistant."

#: method name -> function(spec, cfg) -> [(method id, setting id, hyperparameters)]
METHOD_GRIDS: dict[str, Any] = {
    "kl": _kl_grid,
    "ldifs": _ldifs_grid,
    "persona": _persona_grid,
    "inoculation": _inoculation_grid,
    "interleave": _interleave_grid,
}
