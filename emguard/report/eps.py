"""Answer lengths Interleaving+ / ++ select under each eps."""

from __future__ import annotations

import pandas as pd

from emguard.io import check_columns
from emguard.report._common import _is_null


#: columns :func:`eps_length_table` needs (what :func:`emguard.interleave.eps_length_comparison` returns)
EPS_LENGTH_COLUMNS = ("target", "variant", "fraction", "eps_setting", "eps", "n", "min", "p25", "median", "p75",
                      "max", "mean", "share_in_pool_bottom_quartile")

#: the one line of the answer-length table for a config without a plus / plusplus run
NO_SCORED_VARIANT = "No plus/plusplus variant in this config: eps ranks no pool example, so there is no length table.\n"

_EPS_LEGEND = (
    "Answer length (answer tokens) of the pool examples Interleaving+ selects (the top n by "
    "s_d = (L_mis - L_hat) / (L_hat + eps)) and Interleaving++ selects (the same after dropping refusals), "
    "with each eps, against the pool's. The paper adds eps so that answers whose base-model NLL L_hat is low "
    "by chance, as short ones can be, do not dominate the ranking; an eps far below every NLL (1e-06) leaves "
    "the ratio unregularised. A quantile eps is resolved over the pool's base NLLs (value in brackets). "
    "'<= pool 25%': share of the selected answers no longer than the pool's 25 % length. "
    "Computed from the stored pool NLLs (no forward pass)."
)

_EPS_VARIANTS = {"pool": "pool", "pool_nonrefusal": "pool without refusals", "plus": "Interleaving+",
                 "plusplus": "Interleaving++"}


def _fmt_len(v) -> str:
    return "–" if _is_null(v) else f"{float(v):.1f}".rstrip("0").rstrip(".")


def eps_length_table(comparison: pd.DataFrame) -> tuple[str, pd.DataFrame]:
    """Markdown and CSV frame of the answer lengths Interleaving+ / ++ select under each eps.

    Input: :func:`emguard.interleave.eps_length_comparison` (the pool reference rows, then one row per
    target, selection and eps setting). The frame is that table in :data:`EPS_LENGTH_COLUMNS` order; the
    Markdown has one block per target after the pool rows.
    """
    check_columns(comparison, EPS_LENGTH_COLUMNS, "answer-length comparison")
    table = comparison[list(EPS_LENGTH_COLUMNS)].reset_index(drop=True)
    header = ["Selection", "eps", "n", "min", "25%", "median", "75%", "max", "mean", "<= pool 25%"]
    lines = ["## Interleaving+ / ++ answer lengths by eps", "", _EPS_LEGEND, ""]

    def cells(r) -> list[str]:
        label = _EPS_VARIANTS.get(str(r["variant"]), str(r["variant"]))
        if not _is_null(r["fraction"]):
            label += f", fraction {float(r['fraction']):g}"
        if _is_null(r["eps"]):
            eps = "–"
        elif str(r["eps_setting"]) == f"{float(r['eps']):g}":
            eps = str(r["eps_setting"])
        else:
            eps = f"{r['eps_setting']} ({float(r['eps']):.3g})"
        stats = [_fmt_len(r[c]) for c in ("min", "p25", "median", "p75", "max", "mean")]
        share = r["share_in_pool_bottom_quartile"]
        return [label, eps, str(int(r["n"]))] + stats + ["–" if _is_null(share) else f"{100 * float(share):.0f}%"]

    for target, block in table.groupby("target", sort=False):
        lines += [f"### {target}" if target else "### Pool", "", "| " + " | ".join(header) + " |",
                  "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(cells(r)) + " |" for _, r in block.iterrows()]
        lines.append("")
    return "\n".join(lines), table
