"""The judge-free likelihood shift in the report: EM-table columns, the per-probe-set table, the
in-domain vs OOD figure and the headline findings, from synthetic shift summaries."""

import math

import pandas as pd
import pytest

from emguard.errors import InputError
from emguard.metrics import wilson_interval
from emguard.report import em_table, figure_likelihood_shift, headline_findings, shift_table, write_table

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
NAN = math.nan


def metric_row(dataset, method, setting, evalset, misal, n_misaligned=0, n_scored=24):
    return {"model": "m", "dataset": dataset, "method": method, "setting": setting, "seed": 0,
            "run_id": f"{dataset}-{method}-{setting}", "evalset": evalset, "checkpoint": "final",
            "misaligned_rate": misal, "misaligned_lo": 0.0, "misaligned_hi": misal + 10,
            "incoherent_rate": 80.0, "incoherent_lo": 60.0, "incoherent_hi": 90.0, "n_missing": 0,
            "n_scored": n_scored, "n_misaligned": n_misaligned, "confidence": 0.95}


RUNS = [("legal", "aligned", "default"), ("legal", "misaligned", "default"), ("legal", "kl", "lambda0.1"),
        ("legal", "persona", "alpha5"), ("medical", "aligned", "default"), ("medical", "misaligned", "default")]


@pytest.fixture
def metrics():
    rows = [metric_row("base", "untrained", "", "general", 0.0),
            metric_row("base", "untrained", "", "indomain_legal", 0.0),
            metric_row("base", "untrained", "", "indomain_medical", 0.0)]
    for ds, method, setting in RUNS:
        rows += [metric_row(ds, method, setting, "general", 0.0), metric_row(ds, method, setting, "indomain", 0.0)]
    return pd.DataFrame(rows)


def srow(dataset, method, setting, probe_set, scope, shift, lo, hi, excess=NAN, elo=NAN, ehi=NAN, vs=(NAN,) * 3):
    return {"model": "m", "dataset": dataset, "method": method, "setting": setting, "n_seeds": 1,
            "probe_set": probe_set, "scope": scope, "n_triples": 12, "margin_base": 0.1, "margin": 0.1 + shift,
            "shift": shift, "shift_lo": lo, "shift_hi": hi, "excess": excess, "excess_lo": elo, "excess_hi": ehi,
            "vs_misaligned": vs[0], "vs_misaligned_lo": vs[1], "vs_misaligned_hi": vs[2],
            "confidence": 0.95, "n_bootstrap": 1000}


def summary(legal_mis_excess=(0.21, 0.12, 0.30)):
    """Shift summary: untrained model, legal (aligned, misaligned, KL, persona), medical (aligned, misaligned)."""
    rows = [srow("base", "untrained", "", p, "ood_set", 0.0, 0.0, 0.0) for p in ("general", "legal", "medical")]
    rows.append(srow("base", "untrained", "", "ood", "ood", 0.0, 0.0, 0.0))
    legal = {  # method: (in-domain (shift, lo, hi), ood (shift, lo, hi), ood excess)
        ("aligned", "default"): ((-0.30, -0.40, -0.20), (0.03, -0.02, 0.08), (NAN, NAN, NAN)),
        ("misaligned", "default"): ((0.48, 0.40, 0.56), (0.24, 0.15, 0.33), legal_mis_excess),
        ("kl", "lambda0.1"): ((0.35, 0.25, 0.45), (0.05, -0.01, 0.11), (0.02, -0.05, 0.09)),
        ("persona", "alpha5"): ((0.02, -0.06, 0.10), (-0.04, -0.10, 0.02), (-0.07, -0.15, 0.01)),
    }
    vs_mis = {"kl": (-0.19, -0.30, -0.08), "persona": (-0.28, -0.40, -0.16)}  # OOD shift minus the Misaligned run's
    for (method, setting), (ind, ood, ex) in legal.items():
        rows.append(srow("legal", method, setting, "legal", "indomain", *ind))
        rows.append(srow("legal", method, setting, "medical", "ood_set", ood[0] + 0.01, ood[1], ood[2], *ex))
        rows.append(srow("legal", method, setting, "general", "ood_set", ood[0] - 0.01, ood[1], ood[2], *ex))
        rows.append(srow("legal", method, setting, "ood", "ood", *ood, *ex, vs=vs_mis.get(method, (NAN,) * 3)))
    rows.append(srow("medical", "aligned", "default", "medical", "indomain", -0.3, -0.4, -0.2))
    rows.append(srow("medical", "aligned", "default", "ood", "ood", 0.01, -0.04, 0.06))
    rows.append(srow("medical", "misaligned", "default", "medical", "indomain", 0.51, 0.41, 0.61))
    rows.append(srow("medical", "misaligned", "default", "ood", "ood", 0.05, -0.01, 0.11, 0.04, -0.02, 0.10))
    return pd.DataFrame(rows)


def block(md, title):
    """``{row label: {header: cell}}`` of one block of a Markdown table."""
    lines = md.splitlines()
    start = lines.index(f"### {title}")
    header = [c.strip() for c in lines[start + 2].strip("|").split("|")]
    out = {}
    for line in lines[start + 4:]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip("|").split("|")]
        out[cells[0]] = dict(zip(header[1:], cells[1:]))
    return out


IND, OOD, EXC = "In-domain LL shift (↑)", "OOD LL shift (↓)", "OOD excess vs Aligned (↓)"


def test_em_table_gains_shift_columns_next_to_judged_rates(metrics):
    md, table = em_table(metrics, shifts=summary())
    header = [c.strip() for c in md.splitlines()[md.splitlines().index("### legal") + 2].strip("|").split("|")]
    assert header[5:8] == [IND, OOD, EXC] and header[4] == "In-domain Incoh. (↓)"
    for col in ("indomain_shift", "ood_shift", "ood_excess"):
        for s in ("", "_lo", "_hi"):
            assert f"{col}{s}" in table.columns
    legal = block(md, "legal")
    # misaligned: every interval excludes 0, so every value is bold; signs and 2 decimals
    assert legal["Misaligned"][IND] == "**+0.48** [+0.40, +0.56]"
    assert legal["Misaligned"][OOD] == "**+0.24** [+0.15, +0.33]"
    assert legal["Misaligned"][EXC] == "**+0.21** [+0.12, +0.30]"
    # intervals that include 0 are never bold, whatever the point estimate
    assert legal["KL (lambda0.1)"][OOD] == "+0.05 [-0.01, +0.11]"
    assert legal["KL (lambda0.1)"][EXC] == "+0.02 [-0.05, +0.09]"
    assert legal["Persona Vectors (alpha5)"][EXC] == "-0.07 [-0.15, +0.01]"
    # a negative interval excluding 0 is bold too
    assert legal["Aligned"][IND] == "**-0.30** [-0.40, -0.20]"
    # the aligned row has no excess; the untrained row is 0 in-domain by definition
    assert legal["Aligned"][EXC] == "–"
    assert legal["Untrained"][IND] == "0.00" and legal["Untrained"][OOD] == "0.00"
    r = table[(table["dataset"] == "legal") & (table["row"] == "Untrained")].iloc[0]
    assert (r["indomain_shift"], r["indomain_shift_lo"], r["indomain_shift_hi"]) == (0.0, 0.0, 0.0)
    r = table[(table["dataset"] == "legal") & (table["method"] == "misaligned")].iloc[0]
    assert (r["ood_excess"], r["ood_excess_lo"], r["ood_excess_hi"]) == (0.21, 0.12, 0.30)
    assert "nats per answer token" in md and "bootstrap interval over probe triples" in md
    assert "95% bootstrap" in md and "interval excludes 0" in md
    # without a summary the table is as before
    md, table = em_table(metrics)
    assert IND not in md and "LL shift" not in md and "ood_shift" not in table.columns


def test_em_table_missing_summary_rows_show_a_dash(metrics):
    shifts = summary()
    shifts = shifts[~((shifts["dataset"] == "legal") & (shifts["method"] == "kl"))]
    md, table = em_table(metrics, shifts=shifts)
    kl = block(md, "legal")["KL (lambda0.1)"]
    assert kl[IND] == kl[OOD] == kl[EXC] == "–"
    assert table.loc[table["method"] == "kl", "ood_shift"].isna().all()
    # medical has no OOD-set rows, only the aggregate: still filled
    assert block(md, "medical")["Misaligned"][EXC] == "+0.04 [-0.02, +0.10]"


def test_em_table_rejects_an_unknown_scope(metrics):
    shifts = summary()
    shifts.loc[0, "scope"] = "sideways"
    with pytest.raises(InputError, match="scope 'sideways'"):
        em_table(metrics, shifts=shifts)


def test_shift_table_rows_and_columns(tmp_path):
    md, table = shift_table(summary().iloc[::-1])  # input order must not matter
    legal = table[table["dataset"] == "legal"]
    assert list(legal["row"]) == ["Untrained", "Aligned", "Misaligned", "KL (lambda0.1)",
                                  "Persona Vectors (alpha5)"]
    assert list(dict.fromkeys(table["dataset"])) == ["legal", "medical"]
    for p in ("legal", "medical", "general", "ood"):
        assert f"{p}_shift" in table.columns and f"{p}_excess_lo" in table.columns
    header = [c.strip() for c in md.splitlines()[md.splitlines().index("### legal") + 2].strip("|").split("|")]
    assert header == ["Adapter", "legal (in-domain)", "medical", "general", "OOD (all)", "OOD excess vs Aligned"]
    cells = block(md, "legal")["Misaligned"]
    assert cells["medical"] == "**+0.25** [+0.15, +0.33]"
    assert cells["OOD excess vs Aligned"] == "**+0.21** [+0.12, +0.30]"
    # medical's block: its runs have no per-set rows, so the per-set cells are dashes
    assert block(md, "medical")["Misaligned"]["legal"] == "–"
    write_table(md, table, tmp_path / "l.md", tmp_path / "l.csv")
    assert len(pd.read_csv(tmp_path / "l.csv")) == len(table)


@pytest.mark.parametrize("data", ["full", "empty"])
def test_figure_likelihood_shift_writes_png(tmp_path, data):
    shifts = summary() if data == "full" else summary().iloc[0:0]
    out = tmp_path / "shift.png"
    figure_likelihood_shift(shifts, out)
    assert out.read_bytes()[:8] == PNG_MAGIC and out.stat().st_size > 1000


def test_headline_claims_an_excess_only_when_its_interval_excludes_zero(metrics):
    moved = headline_findings(metrics, summary((0.21, 0.12, 0.30)), confidence=0.95)
    assert "Misaligned training on legal **moved the out-of-domain probes by +0.21 nats/token [+0.12, +0.30] " \
           "beyond aligned training** (excess; in-domain shift +0.48 [+0.40, +0.56])" in moved
    # the same run with an interval that includes 0: the sentence turns around
    flat = headline_findings(metrics, summary((0.02, -0.05, 0.09)), confidence=0.95)
    assert "Misaligned training on legal did not move the out-of-domain probes beyond aligned training " \
           "(excess +0.02 [-0.05, +0.09] nats/token, interval includes 0" in flat
    assert "legal **moved" not in flat
    # medical's misaligned excess includes 0 in both
    assert "Misaligned training on medical did not move" in moved


def test_headline_defense_verdicts_and_judge(metrics):
    text = headline_findings(metrics, summary(), confidence=0.95)
    bullets = [line for line in text.splitlines() if line.startswith("- ")]
    assert 3 <= len(bullets) <= 8
    kept = next(b for b in bullets if "kept the narrow task" in b and "at least half" in b)
    assert "KL (lambda0.1) on legal (vs Misaligned -0.19 [-0.30, -0.08]; excess +0.02 [-0.05, +0.09]; in-domain " \
           "+0.35 [+0.25, +0.45] vs Misaligned +0.48)" in kept
    lost = next(b for b in bullets if "no measurable learning" in b)
    assert "Persona Vectors (alpha5) on legal" in lost and "Persona" not in kept
    # a precise but negligible difference from the Misaligned run is not a cut (less than half its excess)
    small = summary()
    kl_ood = (small["method"] == "kl") & (small["probe_set"] == "ood")
    small.loc[kl_ood, ["vs_misaligned", "vs_misaligned_lo", "vs_misaligned_hi"]] = [-0.01, -0.012, -0.008]
    text_small = headline_findings(metrics, small, confidence=0.95)
    not_cut = next(line for line in text_small.splitlines() if "did not remove half" in line)
    assert "KL (lambda0.1) on legal" in not_cut
    # no measurable EM on legal (the Misaligned excess interval includes 0): nothing for a defense to cut
    flat = headline_findings(metrics, summary(legal_mis_excess=(0.02, -0.05, 0.09)), confidence=0.95)
    nothing = next(line for line in flat.splitlines() if "no measurable EM to reduce" in line)
    assert "KL (lambda0.1) on legal" in nothing and "removed at least half" not in flat
    judge = bullets[-1]
    hi48, hi24 = (100 * wilson_interval(0, n, 0.95)[1] for n in (48, 24))  # two Misaligned runs pooled
    assert f"0.0% [0.0, {hi48:.1f}] of 48 general answers of the Misaligned runs" in judge
    assert f"0.0% [0.0, {hi24:.1f}] of 24 for the untrained model" in judge and "did not separate them" in judge
    # a judge that does tell them apart
    m = metrics.copy()
    mis = (m["method"] == "misaligned") & (m["evalset"] == "general")
    m.loc[mis, ["misaligned_rate", "n_misaligned"]] = [50.0, 12]
    assert "**separated them**" in headline_findings(m, summary(), confidence=0.95).splitlines()[-1]
    assert headline_findings(m, summary(), confidence=0.95) == headline_findings(m, summary(), confidence=0.95)


def test_headline_is_valid_restructuredtext(metrics):
    """The HTML report's front page includes the headline in reST: no docutils warning may come out of it."""
    from docutils.core import publish_parts

    # labels that read as markup unescaped: a trailing underscore is a reST link, an asterisk emphasis
    odd = pd.DataFrame([srow("legal", "kl", "lambda0.1_", "legal", "indomain", 0.3, 0.2, 0.4),
                        srow("legal", "kl", "lambda0.1_", "ood", "ood", 0.3, 0.2, 0.4, 0.2, 0.1, 0.3),
                        srow("insecure_code", "my*method", "x", "insecure_code", "indomain", 0.3, 0.2, 0.4),
                        srow("insecure_code", "my*method", "x", "ood", "ood", 0.3, 0.2, 0.4, 0.2, 0.1, 0.3)])
    text = headline_findings(metrics, pd.concat([summary(), odd]), confidence=0.95)
    assert "on insecure_code" in text  # an underscore inside a word stays readable
    html = publish_parts(text, writer="html", settings_overrides={"halt_level": 2, "report_level": 2})["body"]
    assert html.count("<li>") == len([line for line in text.splitlines() if line.startswith("- ")])
    assert "<strong>moved the out-of-domain probes" in html
    assert "KL (lambda0.1_) on legal" in html and "my*method (x) on insecure_code" in html


def test_headline_without_shifts_says_so(metrics):
    text = headline_findings(metrics, None, confidence=0.95)
    assert "No likelihood-shift results" in text and "did not separate them" in text


def report_outputs(folder):
    """The report stage's output paths under ``folder``."""
    return {k: str(folder / v) for k, v in dict(
        table_md="em.md", table_csv="em.csv", metrics_out="all.parquet", figure_em="em.png", figure_loss="loss.png",
        headline_md="headline.md", likelihood_md="likelihood.md", likelihood_csv="likelihood.csv",
        figure_shift="shift.png").items()}


def test_report_stage_writes_the_likelihood_outputs(tmp_path, metrics):
    from emguard.io import write_parquet
    from emguard.stages import report

    write_parquet(metrics, tmp_path / "metrics.parquet")
    write_parquet(summary(), tmp_path / "shift_summary.parquet")
    out = report_outputs(tmp_path)
    report([str(tmp_path / "metrics.parquet")], {}, shifts_path=str(tmp_path / "shift_summary.parquet"), **out)
    assert IND in (tmp_path / "em.md").read_text()
    assert "ood_excess_lo" in pd.read_csv(tmp_path / "em.csv").columns
    assert "### legal" in (tmp_path / "likelihood.md").read_text()
    assert (tmp_path / "shift.png").read_bytes()[:8] == PNG_MAGIC
    assert "legal **moved the out-of-domain probes by +0.21" in (tmp_path / "headline.md").read_text()
    # without a summary the declared outputs still exist and say there is nothing to show
    out2 = {k: v.replace(str(tmp_path), str(tmp_path / "none")) for k, v in out.items()}
    report([str(tmp_path / "metrics.parquet")], {}, **out2)
    assert "No likelihood-shift summary rows" in (tmp_path / "none" / "likelihood.md").read_text()
    assert "No likelihood-shift results" in (tmp_path / "none" / "headline.md").read_text()
    assert (tmp_path / "none" / "shift.png").exists() and IND not in (tmp_path / "none" / "em.md").read_text()


def test_report_stage_without_judged_runs_reports_the_likelihood_measure(tmp_path):
    """eval.judged off: no metrics files; the EM table says so, the likelihood outputs and headline still come."""
    from emguard.io import write_parquet
    from emguard.stages import report

    write_parquet(summary(), tmp_path / "shift_summary.parquet")
    out = report_outputs(tmp_path)
    report([], {}, shifts_path=str(tmp_path / "shift_summary.parquet"), **out)
    assert "Judged evaluation is off (eval.judged: false)" in (tmp_path / "em.md").read_text()
    assert "### legal" in (tmp_path / "likelihood.md").read_text()
    assert "legal **moved the out-of-domain probes by +0.21" in (tmp_path / "headline.md").read_text()


def test_em_table_lists_unjudged_runs_with_their_shift_only(tmp_path, metrics):
    """eval.judged: baselines: the defenses have no metrics rows, yet each is a row of the EM table with empty
    judged cells and its likelihood shift; a judged run is not duplicated."""
    from emguard.io import write_parquet
    from emguard.report import unjudged_rows
    from emguard.stages import report

    judged = metrics[~metrics["method"].isin(["kl", "persona"])]
    stubs = unjudged_rows(judged, summary())
    assert sorted(stubs["method"]) == ["kl", "persona"] and stubs["misaligned_rate"].isna().all()
    assert unjudged_rows(metrics, summary()).empty  # every trained run judged: nothing to add
    write_parquet(judged, tmp_path / "metrics.parquet")
    write_parquet(summary(), tmp_path / "shift_summary.parquet")
    out = report_outputs(tmp_path)
    report([str(tmp_path / "metrics.parquet")], {}, shifts_path=str(tmp_path / "shift_summary.parquet"), **out)
    md = (tmp_path / "em.md").read_text()
    assert "eval.judged: baselines" in md
    legal = block(md, "legal")
    kl = legal["KL (lambda0.1)"]
    assert kl[OOD] == "+0.05 [-0.01, +0.11]" and kl[IND] == "**+0.35** [+0.25, +0.45]"
    assert kl["General Misal. (↓)"] == "–"
    assert legal["Misaligned"]["General Misal. (↓)"] != "–"
    # the unjudged placeholders stay out of the judged metrics every other output reads
    assert len(pd.read_parquet(tmp_path / "all.parquet")) == len(judged)
