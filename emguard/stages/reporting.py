"""Report stages: every table and figure of the report (:func:`report`, with the answer-length table
:func:`eps_lengths`), the monitor's table and figure, and the adversarial table (:mod:`emguard.report`)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from emguard import schemas
from emguard.io import read_parquet, write_parquet
from emguard.stages.interleaving import _refusal_kwargs, interleave_count


def monitor_report(logs: list[dict], out_md: str, out_csv: str, *, monitor: dict, curve_paths: list[str] = (),
                   base_metrics: list[str] = (), em_threshold: float = 5.0, out_figure: str | None = None) -> None:
    """``results/tables/monitor.{md,csv}``: per monitored run and signal, the calibrated threshold, where the
    monitor stops (or would stop), the stop it made, and, where the run has judged checkpoint curves, the judged
    EM onset and the outcome (:func:`emguard.dynamics.monitor_record`). ``logs``: run descriptors with ``path``
    (train_log.parquet) and ``meta`` (run.json); ``base_metrics``: the untrained model's metrics (its interval is
    the one a judged onset must clear). ``out_figure``: the same record drawn
    (:func:`emguard.report.monitor.figure_monitor`, ``results/figures/monitor.png``)."""
    from emguard import report as rp

    runs = [(r, read_parquet(r["path"]), json.loads(Path(r["meta"]).read_text(encoding="utf-8"))) for r in logs]
    curves = pd.concat([read_parquet(p) for p in curve_paths], ignore_index=True) if curve_paths else None
    base_hi = None
    if base_metrics:
        from emguard.dynamics import base_upper_bounds

        bounds = base_upper_bounds(pd.concat([read_parquet(p) for p in base_metrics], ignore_index=True))
        base_hi = max(bounds.values()) if bounds else None
    markdown, table = rp.monitor_table(runs, monitor=monitor, curves=curves, base_hi=base_hi,
                                       em_threshold=em_threshold)
    rp.write_table(markdown, table, out_md, out_csv)
    if out_figure:
        from emguard.report.monitor import figure_monitor

        figure_monitor(runs, table, out_figure, enabled=bool(monitor.get("enabled")))


def adversarial_report(metrics_paths: list[str], out_md: str, out_csv: str, *, emergence_csv: str | None = None,
                       checkpoint_metrics_paths: list[str] = ()) -> None:
    """``results/tables/adversarial.{md,csv}`` (:func:`emguard.report.adversarial_table`)."""
    from emguard import report as rp

    metrics = pd.concat([read_parquet(p) for p in metrics_paths], ignore_index=True)
    emergence = pd.read_csv(emergence_csv) if emergence_csv and Path(emergence_csv).stat().st_size else None
    ckpt = (pd.concat([read_parquet(p) for p in checkpoint_metrics_paths], ignore_index=True)
            if checkpoint_metrics_paths else None)
    rp.write_table(*rp.adversarial_table(metrics, emergence=emergence, checkpoint_metrics=ckpt), out_md, out_csv)


def eps_label(eps) -> str:
    """How an ``interleave.eps`` setting is named in the answer-length table: ``1e-06`` or ``quantile 0.5``."""
    if isinstance(eps, dict) and "quantile" in eps:
        return f"quantile {float(eps['quantile']):g}"
    return f"{float(eps):g}"


def eps_lengths(out_md: str, out_csv: str, *, nll_path: str | None = None, pool_path: str | None = None,
                targets: dict | None = None, interleave: dict | None = None, note: str | None = None) -> None:
    """Answer lengths Interleaving+ / ++ select with eps = 1e-6 and with the configured ``interleave.eps``,
    against the pool's (:func:`emguard.interleave.eps_length_comparison`, from the stored pool NLLs).

    ``targets``: target -> ``{"adapters": [...], "em": <EM file>, "subset": ..., "selections": [[variant,
    fraction], ...]}``; n for a fraction is what the run mixes in (:func:`interleave_count`). No targets
    (no plus / plusplus run in the config): a one-line table saying so. ``note``: a line above the table (which
    model's pool NLLs it reads, when there are several).
    """
    from emguard import report as rp
    from emguard.interleave import DIVISION_ONLY_EPS, eps_length_comparison

    if not targets:
        rp.write_table(rp.NO_SCORED_VARIANT, pd.DataFrame(columns=list(rp.EPS_LENGTH_COLUMNS)), out_md, out_csv)
        return
    plan = {t: {"adapters": spec["adapters"],
                "selections": [{"variant": v, "fraction": float(f),
                                "n": interleave_count(spec["em"], float(f), spec.get("subset", "misaligned"))}
                               for v, f in spec["selections"]]}
            for t, spec in targets.items()}
    settings = {eps_label(DIVISION_ONLY_EPS): DIVISION_ONLY_EPS, eps_label(interleave["eps"]): interleave["eps"]}
    comparison = eps_length_comparison(read_parquet(nll_path, schemas.POOL_NLL), read_parquet(pool_path, schemas.CHAT),
                                       plan, eps_settings=settings, where=pool_path, nll_where=nll_path,
                                       **_refusal_kwargs(interleave))
    markdown, table = rp.eps_length_table(comparison)
    rp.write_table(f"{note}\n\n{markdown}" if note else markdown, table, out_md, out_csv)


def report(metrics_paths: list[str], train_logs: dict[str, str], *, table_md: str, table_csv: str,
           metrics_out: str, figure_em: str, figure_loss: str, persona_validation: str | None = None,
           persona_md: str | None = None, task_metrics_paths: list[str] = (), opswap_md: str | None = None,
           opswap_csv: str | None = None, eps_md: str | None = None, eps_csv: str | None = None,
           eps_inputs: dict | None = None, shifts_path: str | list[str] | None = None,
           headline_md: str | None = None,
           likelihood_md: str | None = None, likelihood_csv: str | None = None,
           figure_shift: str | None = None, calibration_path: str | None = None,
           calibration_md: str | None = None, judge_usage_paths: list[str] = (), judge_usage_md: str | None = None,
           judge_usage_csv: str | None = None, metric_definition: dict | None = None,
           indomain_questions: int | None = None, question_metrics_paths: list[str] = (),
           questions_md: str | None = None, questions_csv: str | None = None, label_metrics_paths: list[str] = (),
           labels_md: str | None = None, labels_csv: str | None = None,
           tasks_md: str | None = None, tasks_csv: str | None = None, consistency_md: str | None = None,
           consistency_csv: str | None = None, em_runs: list[dict] | None = None, curve_paths: list[str] = (),
           emergence: dict | None = None, emergence_md: str | None = None, emergence_csv: str | None = None,
           figure_emergence: str | None = None, monitor_csv: str | None = None,
           model_sizes: list[dict] | None = None, size_md: str | None = None, size_csv: str | None = None) -> None:
    """Every table and figure of the report.

    ``metric_definition``: the config's ``metrics`` section; the EM tables state it (and refuse metrics
    rows computed with another). ``indomain_questions``: ``eval.indomain.n_questions``, for the EM table's
    note on in-domain question counts. ``questions_md`` / ``_csv``: the per-question EM table from every
    run's ``question_metrics.parquet`` (``question_metrics_paths``). ``labels_md`` / ``_csv``: the label judge's
    distributions (:func:`emguard.report.label_table`) from every run's ``label_metrics.parquet``
    (``label_metrics_paths``).

    ``shifts_path``: the likelihood-shift summary (Parquet, :data:`emguard.report.SHIFT_COLUMNS`), or a list of
    them (one per base model, read as one table); when given, the EM table gains its shift columns and
    ``likelihood_md`` / ``likelihood_csv`` (the per-probe-set table) and ``figure_shift`` (in-domain vs OOD shift)
    are written. ``headline_md``: the
    headline findings (also without a summary: then from the judged metrics only), at the confidence of
    the metrics rows (``metrics.confidence``). ``calibration_path``: the judge's agreement summary
    (:mod:`emguard.calibration`); its note (with a warning when the judge is near chance) stands above the judged
    EM table and the whole table goes to ``calibration_md``; without it both say the judge was not measured.
    ``emergence_md`` / ``_csv`` / ``figure_emergence``: when EM emerges over the checkpoints of the runs'
    ``checkpoint_curve.parquet`` files (``curve_paths``; none: they say no checkpoint was evaluated), with
    ``emergence`` = ``convergence_tolerance`` and ``onset_threshold`` (:mod:`emguard.report.emergence`); the
    figure also draws the monitor's logged signals (``train_logs``) and, with ``monitor_csv`` (the monitor table,
    ``monitor.enabled``), its thresholds and where it stopped or would have stopped each run.
    ``judge_usage_md`` / ``_csv``: the judge usage table from
    every judge job's ``judge_usage.json`` (``judge_usage_paths``). ``task_metrics_paths`` hold OpSwap and benign
    task (FoQA, GSM8K) rows: the OpSwap ones make ``opswap_md`` / ``_csv``, the others ``tasks_md`` / ``_csv``.
    ``consistency_md`` / ``_csv``: EM consistency across seeds (:func:`emguard.report.consistency_table`) at
    ``metric_definition``'s ``em_threshold``, listing every EM run of ``em_runs`` (the config's plan, judged or
    not); the headline states its verdicts. ``size_md`` / ``_csv``: EM rate against model size across the base
    models (:func:`emguard.report.size_em_table` on the consistency table, sizes from ``model_sizes``: the
    config's ``{model, params_b, hub, path}`` per model, :func:`emguard.report.model_sizes`).
    """
    from emguard import report as rp
    from emguard.io import write_text

    if judge_usage_md:
        from emguard.errors import InputError

        records = []
        for path in judge_usage_paths:
            try:
                data = json.loads(Path(path).read_text(encoding="utf-8"))
            except (OSError, json.JSONDecodeError) as exc:
                raise InputError(f"{path}: not a judge usage record: {exc}") from exc
            records += data if isinstance(data, list) else [data]
        rp.write_table(*rp.judge_usage_table(records), judge_usage_md, judge_usage_csv)

    if eps_md:
        eps_lengths(eps_md, eps_csv, **(eps_inputs or {}))

    from emguard.config import is_opswap

    task_rows = (pd.concat([read_parquet(p) for p in task_metrics_paths], ignore_index=True)
                 if task_metrics_paths else pd.DataFrame(columns=["dataset"]))
    opswap_rows = task_rows["dataset"].astype(str).map(is_opswap).astype(bool)
    if tasks_md:
        if (~opswap_rows).any():
            markdown, table = rp.task_table(task_rows[~opswap_rows])
        else:
            markdown, table = ("The config trains on no benign task (data.tasks is empty).\n",
                               rp.task_table(pd.DataFrame(columns=rp.TASK_REQUIRED))[1])
        rp.write_table(markdown, table, tasks_md, tasks_csv)
    if opswap_md:
        if opswap_rows.any():
            markdown, table = rp.opswap_table(task_rows[opswap_rows])
        else:
            markdown, table = ("The config trains on no OpSwap tier (data.opswap.tiers is empty).\n",
                               rp.opswap_table(pd.DataFrame(columns=rp.OPSWAP_REQUIRED))[1])
        rp.write_table(markdown, table, opswap_md, opswap_csv)

    if persona_md:
        write_text(rp.persona_validation_table(read_parquet(persona_validation)) if persona_validation else
                   "The config runs no persona method, so no persona vectors were extracted.\n", persona_md)
    if metrics_paths:
        metrics = pd.concat([read_parquet(p) for p in metrics_paths], ignore_index=True)
    else:  # eval.judged off: no judged rates, the likelihood columns only
        metrics = pd.DataFrame(columns=list(rp.EM_REQUIRED))
    write_parquet(metrics, metrics_out)
    shift_paths = [shifts_path] if isinstance(shifts_path, (str, Path)) else list(shifts_path or ())
    shifts = (pd.concat([read_parquet(p, rp.SHIFT_REQUIRED, allow_empty=True) for p in shift_paths], ignore_index=True)
              if shift_paths else None)
    from emguard.metrics import MetricDefinition

    definition = MetricDefinition.from_config(metric_definition) if metric_definition is not None else None
    # runs the config does not judge (eval.judged: baselines) are rows too, with their likelihood columns only
    listed = metrics
    if shifts is not None:
        from emguard.config import is_task_dataset

        stubs = rp.unjudged_rows(metrics, shifts)
        stubs = stubs[~stubs["dataset"].astype(str).map(is_task_dataset).astype(bool)]  # OpSwap/tasks: own tables
        listed = pd.concat([metrics, stubs], ignore_index=True) if len(stubs) else metrics
    markdown, table = rp.em_table(listed, shifts=shifts, definition=definition, indomain_questions=indomain_questions)
    if questions_md:
        per_question = (pd.concat([read_parquet(p, allow_empty=True) for p in question_metrics_paths], ignore_index=True)
                        if question_metrics_paths else pd.DataFrame(columns=list(rp.EM_REQUIRED) + ["question_id"]))
        rp.write_table(*rp.question_table(per_question, definition=definition), questions_md, questions_csv)
    if labels_md:
        label_rows = [read_parquet(p, allow_empty=True) for p in label_metrics_paths]
        label_rows = [r for r in label_rows if len(r)]
        rp.write_table(*rp.label_table(pd.concat(label_rows, ignore_index=True) if label_rows else None),
                       labels_md, labels_csv)
    calibration = (read_parquet(calibration_path, rp.CALIBRATION_REQUIRED, allow_empty=True)
                   if calibration_path else None)
    if calibration_md:
        write_text(rp.calibration_table(calibration) if metrics_paths or calibration is not None else rp.NOT_JUDGED,
                   calibration_md)
    if metrics_paths:  # the judged rates are only as good as the judge: its agreement stands above them
        markdown = rp.calibration_note(calibration) + "\n" + markdown
    if metrics_paths and len(listed) > len(metrics):
        markdown = ("Only the untrained, aligned and misaligned runs were judged (eval.judged: baselines): the defenses' "
                    "rows show the likelihood shift alone.\n\n" + markdown)
    if not metrics_paths:
        markdown = ("Judged evaluation is off (eval.judged: false): no answers were generated or judged. The "
                    "likelihood measure is in likelihood.md.\n\n" + markdown)
    rp.write_table(markdown, table, table_md, table_csv)
    rp.figure_em_vs_incoherence(metrics, figure_em)
    # without a summary the outputs still exist (a rule may declare them), saying there is nothing to show
    some = shifts if shifts is not None else pd.DataFrame(columns=list(rp.SHIFT_COLUMNS))
    if likelihood_md:
        rp.write_table(*rp.shift_table(some), likelihood_md, likelihood_csv)
    if figure_shift:
        rp.figure_likelihood_shift(some, figure_shift)
    consistency = None
    if consistency_md:
        from emguard.config import DEFAULTS

        threshold = (metric_definition or {}).get("em_threshold", DEFAULTS["metrics"]["em_threshold"])
        consistency_text, consistency = rp.consistency_table(metrics, threshold=threshold, runs=em_runs)
        rp.write_table(consistency_text, consistency, consistency_md, consistency_csv)
        if size_md:
            confidence = float((metric_definition or {}).get("confidence", DEFAULTS["metrics"]["confidence"]))
            rp.write_table(*rp.size_em_table(consistency, rp.model_sizes(model_sizes or []), confidence=confidence),
                           size_md, size_csv)
    if headline_md:
        conf = pd.to_numeric(metrics["confidence"], errors="coerce").dropna() if "confidence" in metrics else ()
        headline = rp.headline_findings(metrics, shifts, confidence=float(conf.iloc[0]) if len(conf) else 0.95,
                                        consistency=consistency)
        if metrics_paths:  # the front page's judged sentence needs the judge's agreement next to it too
            headline += f"- {rp.calibration_note(calibration).strip()}\n"
        write_text(headline, headline_md)
    logs = {run: read_parquet(p) for run, p in train_logs.items()}
    rp.figure_train_loss(logs, figure_loss)
    if emergence_md:
        from emguard.report.emergence import emergence_report

        conf = float(metric_definition["confidence"]) if metric_definition else 0.95
        emergence_report(list(curve_paths), metrics, emergence_md, emergence_csv, figure_emergence,
                         confidence=conf, train_logs=logs, monitor_csv=monitor_csv, **(emergence or {}))
