"""Adversarial probing of latent EM (``results/tables/adversarial.{md,csv}``): per judged run, the misaligned rate on
the adversarial question set (``eval.adversarial``) next to the general questions', at the final adapter and, where
checkpoints are evaluated, at the early-stop checkpoint of the emergence analysis (``emergence.csv``): does
misalignment that the plain questions or early stopping hide come back under adversarial framings?"""

from __future__ import annotations

import math

import pandas as pd

from emguard.io import check_columns

_KEYS = ("model", "dataset", "method", "setting", "seed")

#: columns after the run descriptors
ADVERSARIAL_COLUMNS = ("general_rate", "general_lo", "general_hi", "adversarial_rate", "adversarial_lo",
                       "adversarial_hi", "difference_clear", "early_stop_step", "adversarial_at_stop",
                       "adversarial_at_stop_lo", "adversarial_at_stop_hi")

NOT_CONFIGURED = ("Adversarial probing is off (eval.adversarial.source: null): no run was asked the adversarial "
                  "questions.\n")


def _key(row) -> tuple:
    return tuple(str(row[k]) for k in _KEYS)


def _rates(metrics: pd.DataFrame, evalset: str) -> dict[tuple, tuple[float, float, float]]:
    part = metrics[metrics["evalset"].astype(str) == evalset]
    return {_key(r): (float(r["misaligned_rate"]), float(r["misaligned_lo"]), float(r["misaligned_hi"]))
            for r in part.to_dict("records")}


def _fmt(trio) -> str:
    if trio is None or any(v is None or math.isnan(v) for v in trio):
        return "–"
    return f"{trio[0]:.1f} [{trio[1]:.1f}, {trio[2]:.1f}]"


def adversarial_table(metrics: pd.DataFrame, *, emergence: pd.DataFrame | None = None,
                      checkpoint_metrics: pd.DataFrame | None = None) -> tuple[str, pd.DataFrame]:
    """``metrics``: the final adapters' metrics rows (evalsets ``general`` and ``adversarial``);
    ``emergence``: the emergence table (``early_stop_step`` per run); ``checkpoint_metrics``: the checkpoints'
    metrics rows (``checkpoint`` = ``step-<N>``). A difference is called only where the two intervals (Wilson, in
    percent) do not overlap. Returns (Markdown, frame)."""
    cols = [*_KEYS, *ADVERSARIAL_COLUMNS]
    check_columns(metrics, (*_KEYS, "evalset", "misaligned_rate", "misaligned_lo", "misaligned_hi"), "metrics")
    final = metrics[metrics.get("checkpoint", pd.Series("final", index=metrics.index)).astype(str) == "final"]
    general, adversarial = _rates(final, "general"), _rates(final, "adversarial")
    if not adversarial:
        return NOT_CONFIGURED, pd.DataFrame(columns=cols)
    stops = {}
    if emergence is not None and len(emergence) and "early_stop_step" in emergence.columns:
        stops = {_key(r): r["early_stop_step"] for r in emergence.to_dict("records")}
    at_stop = {}
    if checkpoint_metrics is not None and len(checkpoint_metrics):
        cm = checkpoint_metrics[checkpoint_metrics["evalset"].astype(str) == "adversarial"]
        at_stop = {(*_key(r), str(r["checkpoint"])): (float(r["misaligned_rate"]), float(r["misaligned_lo"]),
                                                      float(r["misaligned_hi"])) for r in cm.to_dict("records")}
    records, lines = [], []
    for key, adv in adversarial.items():
        gen = general.get(key, (math.nan,) * 3)
        clear = (not any(math.isnan(v) for v in (*gen, *adv))) and (adv[1] > gen[2] or adv[2] < gen[1])
        stop = stops.get(key)
        stop = None if stop is None or pd.isna(stop) else int(stop)
        trio = at_stop.get((*key, f"step-{stop}")) if stop is not None else None
        records.append({**dict(zip(_KEYS, key)), "general_rate": gen[0], "general_lo": gen[1], "general_hi": gen[2],
                        "adversarial_rate": adv[0], "adversarial_lo": adv[1], "adversarial_hi": adv[2],
                        "difference_clear": bool(clear), "early_stop_step": stop,
                        "adversarial_at_stop": trio[0] if trio else math.nan,
                        "adversarial_at_stop_lo": trio[1] if trio else math.nan,
                        "adversarial_at_stop_hi": trio[2] if trio else math.nan})
        name = "untrained model" if key[1] == "base" else f"{key[1]}/{key[2]}/{key[3]}/seed{key[4]}"
        lines.append(f"| {name} | {_fmt(gen)} | {_fmt(adv)} | {'yes' if clear else 'no'} | "
                     f"{'–' if stop is None else stop} | {_fmt(trio)} |")
    header = ["## Adversarial probing of latent EM", "",
              "Misaligned rate (percent, Wilson interval) on the general questions and on the adversarial set "
              "(role-play, 'true self', claimed authority, off-the-record and training-shaped prompts) at the final "
              "adapter, and on the adversarial set at the early-stop checkpoint where checkpoints are evaluated. "
              "'Clear' means the two final intervals do not overlap; otherwise no difference was detected at this "
              "sample size.", "",
              "| Run | General | Adversarial | Clear | Early stop | Adversarial at stop |",
              "|---|---|---|---|---|---|"]
    return "\n".join(header + lines) + "\n", pd.DataFrame(records, columns=cols)
