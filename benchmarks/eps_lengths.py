"""Answer lengths Interleaving+ / ++ select with eps = 1e-6 and with the default eps, from stored pool NLLs.

Reads a pool NLL table (``results/interleave/<model>/pool_nll.parquet``: ``id``, ``n_answer_tokens``,
``nll_base``, ``nll_<domain>``...) and the pool it scores (``results/data/pool/pool.parquet``), runs no
forward pass, and prints

* the pool's base-model NLL distribution (quantiles) and how it varies with answer length (the chance
  spread of a mean over few tokens that eps is there to absorb);
* for each target (one target per ``--target DOMAIN``, scored with the other domains' adapters as in the
  pipeline, or one target scored with ``--adapters``; default: all adapters in the table) and each n, the
  answer-length table of the pipeline's report (:func:`emguard.interleave.eps_length_comparison`,
  :func:`emguard.report.eps_length_table`) for every ``--eps`` (default: ``1e-6`` and the default
  ``quantile 0.5``).

n is the number of pool rows a run mixes in: ``--n`` directly, or ``--n-train N`` with ``--fractions``
(f * N rounded, as the pipeline does; default fractions the paper's 0.01 0.05 0.2 0.5).

    python benchmarks/eps_lengths.py --pool-nll results/interleave/smollm2-135m/pool_nll.parquet \\
        --pool results/data/pool/pool.parquet --n-train 90 --fractions 0.05 0.2
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from emguard import schemas  # noqa: E402
from emguard.config import leave_one_out  # noqa: E402
from emguard.interleave import (DEFAULT_EPS, DIVISION_ONLY_EPS, eps_length_comparison, n_interleave,  # noqa: E402
                                resolve_eps)
from emguard.io import read_parquet  # noqa: E402
from emguard.report import eps_length_table  # noqa: E402
from emguard.stages import eps_label  # noqa: E402


def parse_eps(text: str):
    """``1e-6`` -> 1e-6; ``q0.5`` or ``quantile:0.5`` -> ``{"quantile": 0.5}``."""
    t = text.strip().lower()
    for prefix in ("quantile:", "q"):
        if t.startswith(prefix):
            return {"quantile": float(t[len(prefix):])}
    return float(t)


def nll_by_length(nll: pd.DataFrame, bins: int = 4) -> pd.DataFrame:
    """Base NLL quantiles within answer-length quartiles: how much wider the spread is for short answers."""
    ok = nll[(nll["n_answer_tokens"] > 0) & np.isfinite(nll["nll_base"])]
    group = pd.qcut(ok["n_answer_tokens"].rank(method="first"), bins, labels=False)
    rows = []
    for g, part in ok.groupby(group):
        x = part["nll_base"].to_numpy()
        rows.append({"length quartile": int(g) + 1, "tokens": f"{part['n_answer_tokens'].min()}-"
                     f"{part['n_answer_tokens'].max()}", "n": len(x), "min NLL": x.min(),
                     "10% NLL": np.quantile(x, 0.1), "median NLL": np.median(x), "sd NLL": x.std(ddof=1) if len(x) > 1
                     else float("nan")})
    return pd.DataFrame(rows)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pool-nll", required=True, help="pool_nll.parquet (id, n_answer_tokens, nll_base, nll_<domain>)")
    ap.add_argument("--pool", required=True, help="the pool it scores (chat contract)")
    ap.add_argument("--target", action="append", default=[],
                    help="a target domain, scored with every other domain's adapter in the table (repeatable)")
    ap.add_argument("--adapters", nargs="+", help="one target scored with these adapters (default: all)")
    ap.add_argument("--n", type=int, nargs="+", help="selected rows per run")
    ap.add_argument("--n-train", type=int, help="fine-tuning rows N: n = f * N for each of --fractions")
    ap.add_argument("--fractions", type=float, nargs="+", default=[0.01, 0.05, 0.2, 0.5])
    ap.add_argument("--eps", type=parse_eps, action="append",
                    help="an eps setting: a number or q<quantile> (repeatable; default 1e-6 and q0.5)")
    ap.add_argument("--csv", help="also write the table as CSV")
    args = ap.parse_args(argv)

    nll = read_parquet(args.pool_nll, schemas.POOL_NLL)
    pool = read_parquet(args.pool, schemas.CHAT)
    domains = [c[len("nll_"):] for c in nll.columns if c.startswith("nll_") and c != "nll_base"]
    if not domains:
        ap.error(f"{args.pool_nll}: no nll_<adapter> column")
    if args.target:
        targets = {t: leave_one_out(domains, t) for t in args.target}
    else:
        targets = {"all adapters": args.adapters or domains}
    if args.n:
        sizes = [(n, float("nan")) for n in args.n]
    elif args.n_train:
        sizes = [(n_interleave(args.n_train, f), f) for f in args.fractions]
    else:
        ap.error("give --n or --n-train")
    settings = {eps_label(e): e for e in (args.eps or [DIVISION_ONLY_EPS, DEFAULT_EPS])}

    base = nll["nll_base"].to_numpy(dtype=float)
    finite = base[np.isfinite(base)]
    print(f"pool: {len(nll)} rows; adapters {', '.join(domains)}")
    print("base NLL (nats/token) quantiles: " + ", ".join(f"{q:.0%} {np.quantile(finite, q):.3f}"
                                                          for q in (0, 0.05, 0.25, 0.5, 0.75, 1)))
    print("resolved eps: " + ", ".join(f"{k} = {resolve_eps(v, base):.4g}" for k, v in settings.items()))
    print("\nbase NLL by answer-length quartile:\n" + nll_by_length(nll).to_string(index=False, float_format="%.3f"))
    print()
    plan = {t: {"adapters": a, "selections": [{"variant": v, "n": n, "fraction": f} for v in ("plus", "plusplus")
                                              for n, f in sizes]}
            for t, a in targets.items()}
    md, table = eps_length_table(eps_length_comparison(nll, pool, plan, eps_settings=settings,
                                                       where=args.pool, nll_where=args.pool_nll))
    print(md)
    if args.csv:
        table.to_csv(args.csv, index=False)


if __name__ == "__main__":
    main()
