"""The RL setting's table (laid out like the paper's Table 9) and reward curves.

:func:`rl_table` has one row per (model, method, setting): the untrained model, plain GRPO, then every defense,
with train accuracy and reward (of the rollouts sampled from the checkpoint with the highest training reward, the
one the paper evaluates; :func:`train_points`), held-out accuracy and reward, each the mean and standard deviation
across seeds. The sentences under it compare each defense's held-out accuracy with plain GRPO's (and plain GRPO's
with the untrained model's), claiming a difference only when its interval across seeds excludes zero.
:func:`figure_rl_rewards` draws the training reward, accuracy and each reward component against the policy step.
"""

from __future__ import annotations

import math
import os
from typing import Mapping

import numpy as np
import pandas as pd

from emguard.io import check_columns
from emguard.metrics import mean_interval, welch_interval
from emguard.report._common import (_SERIES_COLORS, _empty_axes, _is_null, _new_figure, _save_png, _setting_key,
                                    _split_setting, write_table)

#: columns of an evaluation metrics row the table reads (``emguard.stages.rl.evaluate_grpo_run`` writes them)
EVAL_REQUIRED = ["model", "method", "setting", "seed", "run_id", "checkpoint", "accuracy", "mean_reward", "n_answers"]
#: columns of a GRPO train log the table and the figure read (``emguard.training.grpo.LOG_COLUMNS``)
LOG_REQUIRED = ["step", "policy_step", "reward", "accuracy"]

#: the CSV's columns (``*_sd``: standard deviation across seeds, ddof 1; ``vs_grpo_*``: held-out accuracy minus
#: plain GRPO's, in points, with its interval; for plain GRPO the difference from the untrained model)
RL_TABLE_COLUMNS = ["model", "row", "method", "setting", "n_seeds", "train_accuracy", "train_accuracy_sd",
                    "train_reward", "train_reward_sd", "eval_accuracy", "eval_accuracy_sd", "eval_reward",
                    "eval_reward_sd", "n_eval_answers", "train_checkpoints", "eval_checkpoints", "vs_reference",
                    "vs_diff", "vs_lo", "vs_hi", "best_eval_accuracy", "best_eval_reward"]

#: row order: the untrained model, plain GRPO, then the defenses in the paper's Table 9 order
RL_METHOD_ORDER = ("untrained", "grpo", "persona", "inoculation", "kl", "interleave_random", "interleave_plus",
                   "interleave_plusplus")
RL_LABELS = {"untrained": "No fine-tuning", "grpo": "GRPO", "persona": "+ Persona Vectors",
             "inoculation": "+ Inoculation Prompt", "kl": "+ KL", "interleave_random": "+ Interleaving",
             "interleave_plus": "+ Interleaving+", "interleave_plusplus": "+ Interleaving++"}

OFF_TEXT = ("## The RL setting: GRPO on math problems\n\n"
            "The RL setting is off (`rl.enabled: false`): no GRPO run was trained or evaluated. Set `rl.enabled: true` "
            "to run it (README, \"The RL setting\").\n")


def write_off(table_md: str | os.PathLike, table_csv: str | os.PathLike, figure: str | os.PathLike) -> None:
    """The table, its CSV (header only) and the figure of a config without the RL setting, saying so."""
    write_table(OFF_TEXT, pd.DataFrame(columns=RL_TABLE_COLUMNS), table_md, table_csv)
    fig = _new_figure(6.0, 3.0)
    _empty_axes(fig.subplots(), "RL setting off (rl.enabled: false)")
    _save_png(fig, figure)


def row_label(method: str, setting: str) -> str:
    """``+ KL (beta 0.1)``, ``+ Persona Vectors (alpha 5)``, ``+ Interleaving (25%)``; others by method name."""
    name = RL_LABELS.get(method, method)
    _, value = _split_setting(str(setting))
    if math.isnan(value):
        return name if str(setting) in ("", "default") else f"{name} ({setting})"
    if method == "kl":
        return f"{name} (beta {value:g})"
    if method == "persona":
        suffix = ", response only" if str(setting).endswith("_response") else ""
        return f"{name} (alpha {value:g}{suffix})"
    if method.startswith("interleave_"):
        return f"{name} ({100 * value:g}%)"
    return f"{name} ({setting})"


def train_points(runs: pd.DataFrame, logs: Mapping[str, pd.DataFrame],
                 best_steps: Mapping[str, int | None]) -> pd.DataFrame:
    """Each trained run's training accuracy and reward at the checkpoint the evaluation uses.

    ``runs``: ``run_id``, ``model``, ``method``, ``setting``, ``seed``; ``logs``: run id -> GRPO train log;
    ``best_steps``: run id -> the best checkpoint's step (``run.json``'s ``best_checkpoint_step``, None when no
    saved checkpoint had rollouts of its own). Checkpoint ``step-c``'s values are the log row with ``policy_step``
    ``c`` (the rollouts sampled from its weights: :func:`emguard.training.grpo.best_checkpoint`); without a best checkpoint,
    the last row (``train_checkpoint`` ``last step``). Columns: the descriptors, ``train_accuracy``,
    ``train_reward``, ``train_checkpoint``."""
    rows = []
    for r in runs.itertuples(index=False):
        log = logs[r.run_id]
        check_columns(log, LOG_REQUIRED, f"train log of {r.run_id}")
        best = best_steps.get(r.run_id)
        pick = log[log["policy_step"] == best] if best is not None and not _is_null(best) else log.iloc[0:0]
        label = f"step-{int(best)}" if len(pick) else "last step"
        if not len(pick):
            pick = log.sort_values("step").tail(1)
        rows.append({"run_id": r.run_id, "model": r.model, "method": r.method, "setting": r.setting, "seed": r.seed,
                     "train_accuracy": float(pick["accuracy"].iloc[0]), "train_reward": float(pick["reward"].iloc[0]),
                     "train_checkpoint": label})
    return pd.DataFrame(rows, columns=["run_id", "model", "method", "setting", "seed", "train_accuracy",
                                       "train_reward", "train_checkpoint"])


def _sd(values) -> float:
    xs = np.asarray(values, dtype=float)
    xs = xs[~np.isnan(xs)]
    return float(xs.std(ddof=1)) if len(xs) > 1 else math.nan


def _mean(values) -> float:
    xs = np.asarray(values, dtype=float)
    xs = xs[~np.isnan(xs)]
    return float(xs.mean()) if len(xs) else math.nan


def compare(reference, values, confidence: float = 0.95) -> dict:
    """``mean(values) - mean(reference)`` with an interval across seeds: Welch's (:func:`emguard.metrics.
    welch_interval`) with at least two seeds on each side; a one-sample t interval of ``values - reference`` when the
    reference is a single value (the untrained model, evaluated once because greedy answers do not depend on the
    seed); else no interval (NaN bounds). Returns ``diff``, ``lo``, ``hi``, ``n_ref``, ``n``, ``how``."""
    ref = np.asarray(reference, dtype=float)
    ref = ref[~np.isnan(ref)]
    xs = np.asarray(values, dtype=float)
    xs = xs[~np.isnan(xs)]
    out = {"diff": math.nan, "lo": math.nan, "hi": math.nan, "n_ref": len(ref), "n": len(xs), "how": "none"}
    if not len(ref) or not len(xs):
        return out
    if len(ref) >= 2 and len(xs) >= 2:
        w = welch_interval(ref, xs, confidence)
        out.update(diff=w["diff"], lo=w["lo"], hi=w["hi"], how="Welch over seeds")
    elif len(ref) == 1 and len(xs) >= 2:
        diff, lo, hi = mean_interval(xs - ref[0], confidence)
        out.update(diff=diff, lo=lo, hi=hi, how="t over seeds, the reference evaluated once")
    else:
        out["diff"] = float(xs.mean() - ref.mean())
    return out


def rl_table(evals: pd.DataFrame, train: pd.DataFrame, *, confidence: float = 0.95) -> tuple[str, pd.DataFrame]:
    """The RL table: Markdown and a CSV-ready frame (:data:`RL_TABLE_COLUMNS`).

    ``evals``: one evaluation metrics row per run (:data:`EVAL_REQUIRED`; accuracy in percent); ``train``:
    :func:`train_points` of the trained runs. One row per (model, method, setting) in :data:`RL_METHOD_ORDER`
    (settings by value), means and standard deviations across seeds; the best fine-tuned held-out accuracy and
    reward are bold (as the paper's). Under the table, one sentence per row on its held-out accuracy against plain
    GRPO's (plain GRPO: against the untrained model's), a difference claimed only when the interval
    (:func:`compare`, ``confidence``) excludes zero."""
    check_columns(evals, EVAL_REQUIRED, "RL evaluation metrics")
    keys = ["model", "method", "setting"]
    ev = evals.assign(**{k: evals[k].astype(str) for k in keys})
    tr = train.assign(**{k: train[k].astype(str) for k in keys}) if len(train) else \
        pd.DataFrame(columns=keys + ["seed", "train_accuracy", "train_reward", "train_checkpoint"])
    order = {m: i for i, m in enumerate(RL_METHOD_ORDER)}
    groups = sorted({tuple(k) for k in ev[keys].itertuples(index=False)},
                    key=lambda k: (k[0], order.get(k[1], len(order)), k[1], _setting_key(k[2])))
    records = []
    for model, method, setting in groups:
        e = ev[(ev["model"] == model) & (ev["method"] == method) & (ev["setting"] == setting)].sort_values("seed")
        t = tr[(tr["model"] == model) & (tr["method"] == method) & (tr["setting"] == setting)].sort_values("seed")
        records.append({
            "model": model, "row": row_label(method, setting), "method": method, "setting": setting,
            "n_seeds": int(e["seed"].nunique()),
            "train_accuracy": _mean(t["train_accuracy"]), "train_accuracy_sd": _sd(t["train_accuracy"]),
            "train_reward": _mean(t["train_reward"]), "train_reward_sd": _sd(t["train_reward"]),
            "eval_accuracy": _mean(e["accuracy"]), "eval_accuracy_sd": _sd(e["accuracy"]),
            "eval_reward": _mean(e["mean_reward"]), "eval_reward_sd": _sd(e["mean_reward"]),
            "n_eval_answers": int(pd.to_numeric(e["n_answers"]).sum()),
            "train_checkpoints": ", ".join(map(str, t["train_checkpoint"])),
            "eval_checkpoints": ", ".join(map(str, e["checkpoint"])),
            "_eval_values": e["accuracy"].to_numpy(dtype=float),
        })
    derived = {"vs_reference": None, "vs_diff": math.nan, "vs_lo": math.nan, "vs_hi": math.nan,
               "best_eval_accuracy": False, "best_eval_reward": False}
    table = pd.DataFrame(records, columns=[c for c in RL_TABLE_COLUMNS if c not in derived] + ["_eval_values"])
    table = table.assign(**derived)
    sentences = []
    for model in dict.fromkeys(table["model"]):
        block = table[table["model"] == model]
        ref_of = {m: block[block["method"] == m] for m in ("untrained", "grpo")}
        for i, r in block.iterrows():
            ref_method = {"untrained": None, "grpo": "untrained"}.get(r["method"], "grpo")
            if ref_method is None or ref_of[ref_method].empty:
                continue
            ref = ref_of[ref_method].iloc[0]
            c = compare(ref["_eval_values"], r["_eval_values"], confidence)
            table.loc[i, ["vs_reference", "vs_diff", "vs_lo", "vs_hi"]] = [ref["row"], c["diff"], c["lo"], c["hi"]]
            sentences.append(_sentence(r["row"], ref["row"], c, confidence))
        trained = block[block["method"] != "untrained"]
        for col, flag in (("eval_accuracy", "best_eval_accuracy"), ("eval_reward", "best_eval_reward")):
            if trained[col].notna().any():
                table.loc[trained.index[trained[col] == trained[col].max()], flag] = True
    table = table.drop(columns="_eval_values", errors="ignore").reindex(columns=RL_TABLE_COLUMNS)
    return _markdown(table, sentences, confidence), table


def _sentence(row: str, ref: str, c: dict, confidence: float) -> str:
    level = f"{100 * confidence:g}%"
    if math.isnan(c["diff"]):
        return f"{row}: no held-out accuracy to compare with {ref}."
    if math.isnan(c["lo"]):
        return (f"{row} vs {ref}: {c['diff']:+.1f} points of held-out accuracy, from {c['n']} vs {c['n_ref']} "
                f"seed(s); too few seeds for an interval, so no difference is claimed.")
    ci = f"{level} CI [{c['lo']:+.1f}, {c['hi']:+.1f}], {c['how']}, {c['n']} vs {c['n_ref']} seeds"
    if c["lo"] > 0 or c["hi"] < 0:
        verb = "higher" if c["lo"] > 0 else "lower"
        return f"{row}: held-out accuracy {abs(c['diff']):.1f} points {verb} than {ref} ({ci})."
    diff = c["diff"] if round(c["diff"], 1) != 0 else 0.0
    return (f"{row}: no difference in held-out accuracy from {ref} was detected with these seeds "
            f"({diff:+.1f} points, {ci}).")


def _cell(mean: float, sd: float, fmt: str, bold: bool = False) -> str:
    if math.isnan(mean):
        return "–"
    text = f"{mean:{fmt}}"
    if bold:
        text = f"**{text}**"
    return text if math.isnan(sd) else f"{text} ± {sd:{fmt}}"


def _markdown(table: pd.DataFrame, sentences: list[str], confidence: float) -> str:
    lines = ["## The RL setting: GRPO on math problems", "",
             "Laid out like the paper's Table 9. Train: accuracy (percent of a step's rollouts whose answer is the "
             "reference number) and mean reward (the weighted sum of the rewards of `rl.rewards`, the judge-graded "
             "one included when listed; the four rule-based ones with every weight 1, as in the paper, lie in "
             "[-2.5, 9.5]) of the rollouts sampled from the checkpoint with the "
             "highest training reward, the checkpoint evaluated (column Checkpoint, one per seed; `last step`: no "
             "checkpoint was saved, the last step's rollouts and the final adapter). Eval: the same on the held-out "
             "problems (exact numeric match; the plain format prompt, no inoculation). Cells: mean ± standard "
             "deviation across seeds (none with one seed). Bold: the best fine-tuned result per eval column. "
             "No fine-tuning: the untrained model, evaluated once when decoding is greedy.", ""]
    if table.empty:
        return "\n".join(lines + ["No RL evaluation.", ""])
    models = list(dict.fromkeys(table["model"]))
    header = ["Method", "Train Acc (%)", "Train Rew", "Eval Acc (%)", "Eval Rew", "Checkpoint", "Seeds"]
    for model in models:
        block = table[table["model"] == model]
        if len(models) > 1:
            lines += [f"### {model}", ""]
        lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for _, r in block.iterrows():
            lines.append("| " + " | ".join([
                str(r["row"]), _cell(r["train_accuracy"], r["train_accuracy_sd"], ".1f"),
                _cell(r["train_reward"], r["train_reward_sd"], ".2f"),
                _cell(r["eval_accuracy"], r["eval_accuracy_sd"], ".1f", bool(r["best_eval_accuracy"])),
                _cell(r["eval_reward"], r["eval_reward_sd"], ".2f", bool(r["best_eval_reward"])),
                str(r["train_checkpoints"] or "–"), str(int(r["n_seeds"]))]) + " |")
        lines.append("")
    if sentences:
        lines += [f"Held-out accuracy compared ({100 * confidence:g}% intervals across seeds):", ""]
        lines += [f"- {s}" for s in sentences] + [""]
    return "\n".join(lines)


def figure_rl_rewards(runs: pd.DataFrame, logs: Mapping[str, pd.DataFrame], best_steps: Mapping[str, int | None],
                      path: str | os.PathLike) -> None:
    """Training reward, accuracy and each reward component (``reward_<name>``) against the policy step (the
    updates before a step's rollouts), one line per (method, setting), the mean over seeds; the checkpoint each
    seed is evaluated at is marked on the reward panel. ``runs``: ``run_id``, ``method``, ``setting``, ``seed``."""
    panels = ["reward", "accuracy"]
    for log in logs.values():
        panels += [c for c in log.columns if c.startswith("reward_") and c != "reward_std" and c not in panels]
    ncols = 3
    nrows = max(1, math.ceil(len(panels) / ncols))
    fig = _new_figure(4.2 * ncols, 3.2 * nrows)
    axes = np.atleast_1d(fig.subplots(nrows, ncols)).ravel()
    if runs.empty:
        _empty_axes(axes[0], "no GRPO run")
        for ax in axes[1:]:
            ax.set_visible(False)
        _save_png(fig, path)
        return
    order = {m: i for i, m in enumerate(RL_METHOD_ORDER)}
    groups = sorted({(r.method, r.setting) for r in runs.itertuples(index=False)},
                    key=lambda k: (order.get(k[0], len(order)), k[0], _setting_key(str(k[1]))))
    colors = {g: _SERIES_COLORS[i % len(_SERIES_COLORS)] for i, g in enumerate(groups)}
    for ax, panel in zip(axes, panels):
        for method, setting in groups:
            ids = runs[(runs["method"] == method) & (runs["setting"] == setting)]["run_id"]
            parts = [logs[i][["policy_step", panel]] for i in ids if panel in logs[i].columns]
            if not parts:
                continue
            curve = pd.concat(parts).apply(pd.to_numeric, errors="coerce").groupby("policy_step")[panel].mean()
            ax.plot(curve.index, curve.values, lw=1.2, color=colors[(method, setting)],
                    label=row_label(method, str(setting)))
            if panel == "reward":
                for i in ids:
                    best = best_steps.get(i)
                    hit = logs[i][logs[i]["policy_step"] == best] if best is not None and not _is_null(best) else []
                    if len(hit):
                        ax.plot([best], [float(hit["reward"].iloc[0])], marker="*", ms=9, ls="none",
                                color=colors[(method, setting)])
        ax.set_title({"reward": "total reward (★ evaluated checkpoint)", "accuracy": "accuracy (%)"}.get(
            panel, panel.removeprefix("reward_")), fontsize=9)
        ax.set_xlabel("policy step", fontsize=8)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7, loc="best")
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    _save_png(fig, path)


__all__ = ["EVAL_REQUIRED", "LOG_REQUIRED", "OFF_TEXT", "RL_TABLE_COLUMNS", "compare", "figure_rl_rewards",
           "rl_table", "row_label", "train_points", "write_off"]
