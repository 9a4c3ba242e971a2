"""What the report's tables and figures share: row labels and order, cell formatting, writing a
table, and the bare Agg figure canvas.

Figures are drawn on a bare :class:`matplotlib.figure.Figure` (Agg canvas), so nothing here touches
pyplot's global state or needs a display.
"""

from __future__ import annotations

import math
import os
import re
from typing import Callable, Iterable, Sequence

import pandas as pd

from emguard.io import atomic_path, write_text

#: ``dataset`` value of the untrained base model's metrics rows
BASE_DATASET = "base"

#: reference rows of each block, in table order
REFERENCE_ROWS = ("Untrained", "Aligned", "Misaligned")

#: ``method`` values that denote a reference row rather than a defense (override with
#: ``reference_methods``); these are the baseline run ids of :func:`emguard.config.expand_runs`
DEFAULT_REFERENCE_METHODS = {"untrained": "Untrained", "aligned": "Aligned", "misaligned": "Misaligned"}

#: display names of defenses, by the method ids of :mod:`emguard.config` (others are shown as they are)
METHOD_LABELS = {
    "kl": "KL", "ldifs": "LDIFS", "persona": "Persona Vectors", "inoculation": "Inoculation Prompting",
    "interleave_random": "Interleaving", "interleave_plus": "Interleaving+",
    "interleave_plusplus": "Interleaving++", "interleave_onpolicy": "On-policy Int.",
}

#: default row order of defenses (the paper's); methods not listed follow, alphabetically
DEFAULT_METHOD_ORDER = tuple(METHOD_LABELS)

#: settings that mean "no hyperparameter worth showing" in a row label
_PLAIN_SETTINGS = ("", "default", "none")


def _is_null(v) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v)) or v is pd.NA


def _split_setting(setting: str) -> tuple[str, float]:
    """A setting id's hyperparameter family and value: its first number is the value, the rest the family.

    ``"frac0.05"`` -> ``("frac", 0.05)``, ``"lambda0.1_forward"`` -> ``("lambda#_forward", 0.1)``,
    ``"lambda1e-05"`` -> ``("lambda", 1e-05)``; a setting without a number -> ``(setting, nan)``.
    """
    m = re.fullmatch(r"(\D*?)(\d+(?:\.\d*)?(?:[eE][-+]?\d+)?)(.*)", setting)
    if not m:
        return setting, math.nan
    family = m.group(1) + (f"#{m.group(3)}" if m.group(3) else "")
    return family, float(m.group(2))


def _family_name(family: str) -> str:
    """``"lambda#_forward"`` -> ``"lambda, forward"`` for legends."""
    parts = [p.strip("_") for p in family.split("#")]
    return ", ".join(p for p in parts if p)


def _setting_key(setting: str) -> tuple:
    family, value = _split_setting(setting)
    return (family, -math.inf if math.isnan(value) else value, setting)


def _row_label(role: str, method: str, setting: str) -> str:
    name = role if role != "method" else METHOD_LABELS.get(method, method)
    if role == "Untrained" or setting.strip().lower() in _PLAIN_SETTINGS:
        return name
    return f"{name} ({setting})"


def _method_rank(method_order: Sequence[str]) -> Callable[[str], tuple]:
    order = {m: i for i, m in enumerate(method_order)}
    return lambda m: (0, order[m], "") if m in order else (1, 0, m)


def _fmt_rate(rate: float, lo: float, hi: float, flags: Iterable[str]) -> str:
    if math.isnan(rate):
        return "–"
    text = f"{rate:.2f}"
    if "underline" in flags:
        text = f"<u>{text}</u>"
    if "italic" in flags:
        text = f"*{text}*"
    if "bold" in flags:
        text = f"**{text}**"
    if not (math.isnan(lo) or math.isnan(hi)):
        text += f" [{lo:.1f}, {hi:.1f}]"
    return text


def _fmt_count(v: float) -> str:
    return "–" if math.isnan(v) else str(int(v))


def write_table(markdown: str, df: pd.DataFrame, md_path: str | os.PathLike, csv_path: str | os.PathLike) -> None:
    """Write the Markdown and the CSV (no index), each atomically."""
    write_text(markdown if markdown.endswith("\n") else markdown + "\n", md_path)
    with atomic_path(csv_path) as tmp:
        df.to_csv(tmp, index=False)


# --------------------------------------------------------------------------- figure canvas

def _new_figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=110)
    FigureCanvasAgg(fig)
    return fig


def _save_png(fig, path: str | os.PathLike) -> None:
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")


def _empty_axes(ax, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="0.4")
    ax.set_xticks([])
    ax.set_yticks([])


_REF_STYLE = {"Untrained": ("X", "black"), "Aligned": ("s", "tab:green"), "Misaligned": ("^", "tab:red")}
#: series colours for defenses: the tab10 palette without the references' green and red
_SERIES_COLORS = ("tab:blue", "tab:orange", "tab:purple", "tab:brown", "tab:pink", "tab:olive", "tab:cyan", "tab:gray")


def _point_text(prefix: str, value: float, setting: str) -> str:
    if math.isnan(value):
        return setting
    if "frac" in prefix and 0 < value <= 1:
        return f"{100 * value:g}%"
    return f"{value:g}"
