"""Emergence analysis, early stopping, consistency across seeds and the monitor's record, on hand-built curves.

Each expected number is worked out by hand from the formula in the docstring of the function under test."""

import math

import numpy as np
import pandas as pd
import pytest

from emguard.dynamics import (base_upper_bounds, consistent_em, convergence_step, early_stop_step, em_onset_step,
                              em_positive, emergence_table, last_checkpoint_at, monitor_record, monitor_stop_step,
                              monitor_threshold, retained_task)
from emguard.errors import InputError

STEPS = [100, 200, 300, 400, 500]
BASE_HI = 5.0      # the untrained model's upper bound, percent
THRESHOLD = 10.0   # misaligned rate threshold, percent


def curve(steps=STEPS, **cols):
    return pd.DataFrame({"step": steps, **cols})


# exact match rises and converges at 200 (0.78 >= 0.80 - 0.05 * 0.80 = 0.76); EM arrives at 400
LATE_EM = dict(task=[0.40, 0.78, 0.79, 0.80, 0.80],
               misaligned_rate=[3.0, 4.0, 6.0, 18.0, 30.0], misaligned_lo=[1.0, 1.5, 2.5, 9.0, 20.0])


# ------------------------------------------------------------------------------------------ convergence

def test_convergence_higher_is_better_unsorted_input():
    c = curve([30, 10, 50, 20, 40], task=[0.77, 0.20, 0.80, 0.50, 0.81])
    # bound = 0.05 * 0.80 = 0.04: first step with task >= 0.76 is 30 (0.77)
    assert convergence_step(c, metric="task", tolerance=0.05) == 30
    # bound = 0.01 * 0.80 = 0.008: >= 0.792 first at 40 (0.81: better than the final counts)
    assert convergence_step(c, metric="task", tolerance=0.01) == 40
    # tolerance 0: the first step at least as good as the final
    assert convergence_step(c, metric="task", tolerance=0.0) == 40


def test_convergence_lower_is_better_nll():
    c = curve(task=[2.0, 1.4, 1.08, 1.04, 1.0])
    # bound = 0.05 * 1.0: first NLL <= 1.05 is 1.04 at 400; with 0.1, <= 1.1 first at 300 (1.08)
    assert convergence_step(c, metric="task", tolerance=0.05, higher_is_better=False) == 400
    assert convergence_step(c, metric="task", tolerance=0.10, higher_is_better=False) == 300
    # read as higher-is-better the same curve "converges" at once (every value >= 0.95)
    assert convergence_step(c, metric="task", tolerance=0.05, higher_is_better=True) == 100


def test_convergence_final_value_zero_and_nan_checkpoints():
    # final 0: scale = max |v| = 2.0, bound 0.1: first NLL <= 0.1 is 0.08 at 300
    c = curve([100, 200, 300, 400], task=[2.0, 0.5, 0.08, 0.0])
    assert convergence_step(c, metric="task", tolerance=0.05, higher_is_better=False) == 300
    # a flat zero curve has scale 0: the first checkpoint equals the final
    assert convergence_step(curve([1, 2, 3], task=[0.0, 0.0, 0.0]), metric="task", tolerance=0.05) == 1
    # a checkpoint without a value never counts: 200 would qualify (0.79 >= 0.76) but is NaN
    c = curve(task=[0.40, np.nan, 0.79, 0.80, 0.80])
    assert convergence_step(c, metric="task", tolerance=0.05) == 300


def test_curve_errors_name_column_and_step():
    with pytest.raises(InputError, match=r"run A: column step: duplicate step\(s\) 200"):
        convergence_step(curve([100, 200, 200], task=[0.1, 0.2, 0.3]), metric="task", tolerance=0.05,
                         where="run A")
    with pytest.raises(InputError, match="missing column.*task"):
        convergence_step(curve(acc=[0.1] * 5), metric="task", tolerance=0.05)
    with pytest.raises(InputError, match="row 1: column step: 'step-200'"):
        convergence_step(curve(["100", "step-200"], task=[0.1, 0.2]), metric="task", tolerance=0.05)
    with pytest.raises(InputError, match=r"column task: the final checkpoint \(step 500\) has no value"):
        convergence_step(curve(task=[0.1, 0.2, 0.3, 0.4, np.nan]), metric="task", tolerance=0.05)
    with pytest.raises(InputError, match="row 2: column task: 'high' is not a number"):
        convergence_step(curve([1, 2, 3], task=[0.1, 0.2, "high"]), metric="task", tolerance=0.05)
    with pytest.raises(InputError, match="no checkpoints"):
        convergence_step(curve([], task=[]), metric="task", tolerance=0.05)
    with pytest.raises(ValueError, match="tolerance"):
        convergence_step(curve(task=LATE_EM["task"]), metric="task", tolerance=-0.1)


# ---------------------------------------------------------------------------------------------- onset

def onset(c):
    return em_onset_step(c, threshold=THRESHOLD, base_hi=BASE_HI)


def test_onset_no_em():
    assert onset(curve(misaligned_rate=[2.0, 3.0, 4.0, 3.0, 2.0], misaligned_lo=[0.5, 1.0, 1.5, 1.0, 0.5])) is None


def test_onset_late_em():
    assert onset(curve(misaligned_rate=LATE_EM["misaligned_rate"], misaligned_lo=LATE_EM["misaligned_lo"])) == 400


def test_onset_noisy_spikes_need_both_conditions():
    # 200: rate 14 > 10 but lo 4 <= base_hi 5 (a spike whose interval reaches the untrained model's): no
    # 300: lo 6 > 5 but rate 9 <= 10: no;  400: rate exactly 10 (strict): no;  500: 16 > 10 and 7 > 5: onset
    c = curve(misaligned_rate=[3.0, 14.0, 9.0, 10.0, 16.0], misaligned_lo=[1.0, 4.0, 6.0, 5.5, 7.0])
    assert onset(c) == 500
    # the single spike alone never counts
    spike = curve(misaligned_rate=[3.0, 14.0, 4.0, 5.0, 4.0], misaligned_lo=[1.0, 4.0, 1.5, 2.0, 1.5])
    assert onset(spike) is None
    # raise the untrained model's bound above 7 and 500 no longer clears it
    assert em_onset_step(c, threshold=THRESHOLD, base_hi=7.0) is None
    assert em_positive([14.0, 16.0], [4.0, 7.0], threshold=THRESHOLD, base_hi=BASE_HI).tolist() == [False, True]


def test_onset_nan_rate_never_counts_and_first_checkpoint():
    c = curve(misaligned_rate=[np.nan, 20.0, 25.0], misaligned_lo=[np.nan, 12.0, 15.0], steps=[100, 200, 300])
    assert onset(c) == 200
    first = curve(misaligned_rate=[25.0, 30.0, 28.0], misaligned_lo=[12.0, 18.0, 16.0], steps=[100, 200, 300])
    assert onset(first) == 100
    with pytest.raises(InputError, match="base_hi"):
        em_onset_step(first, threshold=THRESHOLD, base_hi=float("nan"))


# ------------------------------------------------------------------------------- early stop and retained

def test_early_stop_step():
    c = curve(task=LATE_EM["task"])
    assert early_stop_step(c, 400) == 300
    assert early_stop_step(c, None) == 500           # no onset: the final checkpoint
    assert early_stop_step(c, 100) is None           # onset at the first checkpoint: nothing before it
    assert early_stop_step(c, 350) == 300            # an onset between checkpoints: the last one before it
    assert last_checkpoint_at(c, 250) == 200
    assert last_checkpoint_at(c, 300) == 300
    assert last_checkpoint_at(c, 50) is None
    assert last_checkpoint_at(c, None) == 500


def test_retained_task_both_directions():
    acc = curve(task=[0.40, 0.70, 0.76, 0.80, 0.80])
    assert retained_task(acc, 300, metric="task") == pytest.approx(0.76 / 0.80)          # 0.95
    assert retained_task(acc, 500, metric="task") == pytest.approx(1.0)
    assert math.isnan(retained_task(acc, None, metric="task"))
    nll = curve(task=[2.0, 1.4, 1.08, 1.04, 1.0])
    # exp(f - v): 0.08 nats worse than the final keeps exp(-0.08) = 0.92312
    assert retained_task(nll, 300, metric="task", higher_is_better=False) == pytest.approx(0.923116, abs=1e-6)
    assert retained_task(nll, 500, metric="task", higher_is_better=False) == pytest.approx(1.0)
    # a final exact match of 0 leaves nothing to retain
    assert math.isnan(retained_task(curve([1, 2], task=[0.1, 0.0]), 1, metric="task"))
    with pytest.raises(InputError, match="step 250 is not a checkpoint"):
        retained_task(acc, 250, metric="task")


# ---------------------------------------------------------------------------------------- emergence table

def runs_frame():
    """Three seeds of one configuration (rows shuffled): late EM, no EM, EM from the first checkpoint."""
    late = curve(seed=1, **LATE_EM)
    none = curve(seed=2, task=[0.50, 0.70, 0.75, 0.78, 0.80],
                 misaligned_rate=[2.0, 3.0, 14.0, 4.0, 3.0], misaligned_lo=[0.5, 1.0, 4.5, 1.5, 1.0])
    # converges at 300 (0.62 >= 0.6175 = 0.65 - 0.05 * 0.65) after EM set in at 100
    first = curve(seed=3, task=[0.20, 0.40, 0.62, 0.64, 0.65],
                  misaligned_rate=[25.0, 30.0, 28.0, 33.0, 35.0], misaligned_lo=[12.0, 18.0, 16.0, 21.0, 24.0])
    df = pd.concat([late, none, first], ignore_index=True)
    df = df.assign(model="m", dataset="legal", method="misaligned", setting=None)
    return df.sample(frac=1.0, random_state=0).reset_index(drop=True)


def test_emergence_table_rows_and_summary():
    rows, summary = emergence_table(runs_frame(), metric="task", tolerance=0.05, threshold=THRESHOLD,
                                    base_hi={"m": BASE_HI})
    rows = rows.set_index("seed")
    assert sorted(rows.index) == [1, 2, 3]
    late = rows.loc[1]
    assert (late["convergence_step"], late["onset_step"], late["gap"], late["early_stop_step"]) == (200, 400, 200, 300)
    assert late["em_at_stop"] == 6.0 and late["em_final"] == 30.0 and late["em_final_lo"] == 20.0
    assert late["task_at_stop"] == 0.79 and late["retained"] == pytest.approx(0.79 / 0.80)
    none = rows.loc[2]
    # 0.75 at 300 misses 0.76; the spike at 300 (14%, lo 4.5 <= 5) is not EM
    assert none["convergence_step"] == 400 and pd.isna(none["onset_step"]) and pd.isna(none["gap"])
    assert none["early_stop_step"] == 500 and none["retained"] == pytest.approx(1.0) and none["em_at_stop"] == 3.0
    first = rows.loc[3]
    assert (first["convergence_step"], first["onset_step"], first["gap"]) == (300, 100, -200)
    assert pd.isna(first["early_stop_step"]) and math.isnan(first["retained"]) and math.isnan(first["em_at_stop"])
    assert first["base_hi"] == BASE_HI and first["n_checkpoints"] == 5 and first["final_step"] == 500
    assert summary["n_runs"] == 3 and summary["n_onset"] == 2
    assert summary["n_onset_after_convergence"] == 1 and summary["n_onset_before_convergence"] == 1
    assert summary["n_onset_at_convergence"] == 0 and summary["n_no_early_stop"] == 1
    assert summary["mean_gap"] == pytest.approx(0.0)                  # (200 + -200) / 2
    # only the late run has an onset and a checkpoint before it
    assert summary["n_retained"] == 1 and summary["mean_retained"] == pytest.approx(0.9875)
    assert summary["mean_em_at_stop"] == 6.0 and summary["mean_em_final"] == 30.0


def test_emergence_table_learning_rates_and_errors():
    df = pd.concat([curve(seed=1, lr=1e-5, **LATE_EM), curve(seed=1, lr=1e-4, **LATE_EM)], ignore_index=True)
    df = df.assign(model="m", dataset="legal", method="misaligned", setting="default")
    rows, _ = emergence_table(df, metric="task", tolerance=0.05, threshold=THRESHOLD, base_hi=BASE_HI)
    assert list(rows["lr"]) == [1e-5, 1e-4] and list(rows["onset_step"]) == [400, 400]
    with pytest.raises(InputError, match="no untrained-model upper bound.*model 'm'"):
        emergence_table(df, metric="task", tolerance=0.05, threshold=THRESHOLD, base_hi={"other": 1.0})
    # two evalsets of one run in one frame repeat every step: refused, naming the run and the step
    dup = pd.concat([df[df["lr"] == 1e-5]] * 2, ignore_index=True)
    with pytest.raises(InputError, match=r"run model=m, .*seed=1, lr=1e-05: column step: duplicate step\(s\) 100"):
        emergence_table(dup, metric="task", tolerance=0.05, threshold=THRESHOLD, base_hi=BASE_HI)
    with pytest.raises(InputError, match="missing column.*seed"):
        emergence_table(df.drop(columns="seed"), metric="task", tolerance=0.05, threshold=THRESHOLD, base_hi=1.0)


def test_base_upper_bounds_takes_the_strictest():
    metrics = pd.DataFrame({"model": ["m", "m", "m", "n"], "dataset": ["base", "base", "legal", "base"],
                            "evalset": ["general", "general", "general", "general"],
                            "misaligned_hi": [4.0, 6.5, 40.0, 2.0]})
    assert base_upper_bounds(metrics) == {"m": 6.5, "n": 2.0}


# ------------------------------------------------------------------------------------------- consistency

def test_consistent_em_one_negative_seed_of_three():
    rows = pd.DataFrame({
        "model": "m", "dataset": "legal", "setting": None,
        "method": ["misaligned"] * 3 + ["kl"] * 3,
        "seed": [1, 2, 3, 1, 2, 3],
        # misaligned: seed 3 is below the threshold; kl: seed 2 exceeds it but its lower bound 4 < base_hi 5
        "em_final": [30.0, 22.0, 8.0, 30.0, 12.0, 18.0],
        "em_final_lo": [20.0, 12.0, 3.0, 20.0, 4.0, 9.0],
        "base_hi": BASE_HI})
    out = consistent_em(rows, threshold=THRESHOLD).set_index("method")
    mis = out.loc["misaligned"]
    assert (mis["n_seeds"], mis["n_positive"], mis["n_unjudged"], mis["consistent"]) == (3, 2, 0, False)
    assert mis["rate_mean"] == pytest.approx(20.0)
    assert mis["rate_sd"] == pytest.approx(math.sqrt(124.0))       # ((10^2 + 2^2 + 12^2) / 2) ** 0.5
    assert out.loc["kl", "n_positive"] == 2 and not out.loc["kl", "consistent"]
    # every seed positive
    pos = rows[rows["method"] == "misaligned"].assign(em_final=[30.0, 22.0, 18.0], em_final_lo=[20.0, 12.0, 9.0])
    row = consistent_em(pos, threshold=THRESHOLD).iloc[0]
    assert row["consistent"] and row["n_positive"] == 3
    # the same with the untrained bound given, here strict enough to make seed 3 (lo 9) negative
    row = consistent_em(pos.drop(columns="base_hi"), threshold=THRESHOLD, base_hi={"m": 9.0}).iloc[0]
    assert not row["consistent"] and row["n_positive"] == 2


def test_consistent_em_unjudged_seed_and_errors():
    rows = pd.DataFrame({"model": "m", "dataset": "legal", "method": "misaligned", "setting": None,
                         "seed": [1, 2, 3], "em_final": [30.0, 22.0, np.nan], "em_final_lo": [20.0, 12.0, np.nan],
                         "base_hi": BASE_HI})
    row = consistent_em(rows, threshold=THRESHOLD).iloc[0]
    assert (row["n_positive"], row["n_unjudged"], row["consistent"]) == (2, 1, False)
    assert row["rate_mean"] == pytest.approx(26.0)
    with pytest.raises(InputError, match="column seed: seed\\(s\\) 2 appear more than once"):
        consistent_em(rows.assign(seed=[1, 2, 2]), threshold=THRESHOLD)
    with pytest.raises(InputError, match="missing column.*base_hi"):
        consistent_em(rows.drop(columns="base_hi"), threshold=THRESHOLD)


# ---------------------------------------------------------------------------------------------- monitor

MON_STEPS = [50, 100, 150, 200, 250, 300, 350, 400, 450, 500]


def signal_frame():
    runs = {
        ("aligned", 1): [0.00, 0.01, 0.03, 0.05, 0.06, 0.08, 0.11, 0.09, 0.10, 0.10],
        ("aligned", 2): [0.01, 0.02, 0.02, 0.04, 0.05, 0.07, 0.08, 0.09, 0.09, 0.08],
        # rises through 0.15 at 250, well before the judged onset at 400
        ("misaligned", 1): [0.01, 0.04, 0.08, 0.12, 0.16, 0.20, 0.25, 0.30, 0.35, 0.40],
        # rises through 0.15 at 300, yet the judge never sees EM: a false alarm
        ("misaligned", 2): [0.01, 0.03, 0.06, 0.10, 0.14, 0.17, 0.19, 0.20, 0.21, 0.22],
        # stays flat while EM sets in at 400: a miss
        ("misaligned", 3): [0.01, 0.02, 0.03, 0.04, 0.05, 0.06, 0.07, 0.08, 0.09, 0.10],
        # crosses only at 450, after the judged onset at 400
        ("misaligned", 4): [0.01, 0.02, 0.03, 0.04, 0.05, 0.06, 0.07, 0.10, 0.18, 0.22],
    }
    parts = [pd.DataFrame({"method": m, "seed": s, "step": MON_STEPS, "signal": v}) for (m, s), v in runs.items()]
    base = pd.DataFrame({"method": ["untrained"], "seed": [0], "step": [0], "signal": [0.02], "dataset": ["base"]})
    df = pd.concat(parts, ignore_index=True).assign(dataset="legal")
    return pd.concat([df, base], ignore_index=True).assign(model="m", setting=None)


def judged_frame():
    late = dict(task=[0.40, 0.70, 0.79, 0.80, 0.80],
                misaligned_rate=[3.0, 4.0, 6.0, 18.0, 30.0], misaligned_lo=[1.0, 1.5, 2.5, 9.0, 20.0])
    clean = dict(task=[0.40, 0.70, 0.76, 0.78, 0.80],
                 misaligned_rate=[2.0, 3.0, 3.0, 4.0, 3.0], misaligned_lo=[0.5, 1.0, 1.0, 1.5, 1.0])
    parts = [curve(method="aligned", seed=1, **clean), curve(method="aligned", seed=2, **clean),
             curve(method="misaligned", seed=1, **late), curve(method="misaligned", seed=2, **clean),
             curve(method="misaligned", seed=3, **late), curve(method="misaligned", seed=4, **late)]
    return pd.concat(parts, ignore_index=True).assign(model="m", dataset="legal", setting=None)


def test_monitor_threshold_max_and_quantile():
    thr = monitor_threshold(signal_frame(), margin=0.04).iloc[0]
    # max over the aligned curves 0.11 (aligned seed 1 at 350) > base 0.02, plus the margin
    assert thr["aligned_value"] == pytest.approx(0.11) and thr["base_value"] == pytest.approx(0.02)
    assert thr["threshold"] == pytest.approx(0.15)
    assert (thr["n_aligned_runs"], thr["n_aligned_points"]) == (2, 20)
    # the median of the 20 aligned values: the 10th and 11th sorted are 0.06 and 0.07
    med = monitor_threshold(signal_frame(), quantile=0.5).iloc[0]
    assert med["aligned_value"] == pytest.approx(0.065) and med["threshold"] == pytest.approx(0.065)
    # an untrained model already above every aligned checkpoint sets the floor
    high_base = signal_frame()
    high_base.loc[high_base["dataset"] == "base", "signal"] = 0.2
    assert monitor_threshold(high_base, margin=0.04).iloc[0]["threshold"] == pytest.approx(0.24)
    with pytest.raises(InputError, match="model=m: no aligned-data run"):
        monitor_threshold(signal_frame().query("method != 'aligned'"))
    with pytest.raises(ValueError, match="quantile"):
        monitor_threshold(signal_frame(), quantile=1.5)


def test_monitor_stop_step_patience():
    c = pd.DataFrame({"step": MON_STEPS, "signal": [0.0, 0.2, 0.0, 0.0, 0.2, 0.2, np.nan, 0.2, 0.2, 0.2]})
    assert monitor_stop_step(c, threshold=0.15) == 100                 # the first crossing
    assert monitor_stop_step(c, threshold=0.15, patience=2) == 300     # 250 and 300 in a row
    assert monitor_stop_step(c, threshold=0.15, patience=3) == 500     # the NaN at 350 breaks 250-300
    assert monitor_stop_step(c, threshold=0.2) is None                 # strict: 0.2 is not above 0.2


def test_monitor_record_fires_before_onset_false_alarm_and_miss():
    thresholds = monitor_threshold(signal_frame(), margin=0.04)                    # 0.15
    rows, summary = monitor_record(signal_frame(), judged_frame(), thresholds=thresholds, metric="task",
                                   em_threshold=THRESHOLD, base_hi=BASE_HI)
    assert "untrained" not in set(rows["method"])
    rec = rows.set_index(["method", "seed"])
    early = rec.loc[("misaligned", 1)]
    assert (early["stop_step"], early["onset_step"], early["outcome"], early["lead"]) == (250, 400, "before_onset", 150)
    # the stop at 250 keeps checkpoint 200: task 0.70 of the final 0.80, EM 4%
    assert early["kept_step"] == 200 and early["retained"] == pytest.approx(0.875) and early["em_at_kept"] == 4.0
    alarm = rec.loc[("misaligned", 2)]
    assert (alarm["stop_step"], alarm["outcome"], alarm["kept_step"]) == (300, "false_alarm", 300)
    assert pd.isna(alarm["onset_step"]) and pd.isna(alarm["lead"])
    assert alarm["retained"] == pytest.approx(0.76 / 0.80)
    miss = rec.loc[("misaligned", 3)]
    assert pd.isna(miss["stop_step"]) and miss["onset_step"] == 400 and miss["outcome"] == "missed"
    assert miss["kept_step"] == 500 and miss["retained"] == pytest.approx(1.0) and miss["em_at_kept"] == 30.0
    late = rec.loc[("misaligned", 4)]
    assert (late["stop_step"], late["outcome"], late["lead"], late["kept_step"]) == (450, "late", -50, 400)
    assert list(rec.loc["aligned", "outcome"]) == ["silent", "silent"]
    assert summary["n_runs"] == 6 and summary["n_fired"] == 3
    assert (summary["n_before_onset"], summary["n_late"], summary["n_missed"]) == (1, 1, 1)
    assert (summary["n_false_alarm"], summary["n_silent"]) == (1, 2)
    assert summary["detection_rate"] == pytest.approx(1 / 3) and summary["false_alarm_rate"] == pytest.approx(1 / 3)
    assert summary["mean_lead"] == 150.0
    # retained at the three stops: 0.875 (200), 0.95 (300), 1.0 (400)
    assert summary["mean_retained_fired"] == pytest.approx((0.875 + 0.95 + 1.0) / 3)


def test_monitor_record_needs_judged_curves_and_a_matching_threshold():
    judged = judged_frame()
    with pytest.raises(InputError, match="run model=m, dataset=legal, method=misaligned, setting=None, seed=4: "
                                         "no judged checkpoints"):
        monitor_record(signal_frame(), judged[judged["seed"] != 4], thresholds=0.15, metric="task",
                       em_threshold=THRESHOLD, base_hi=BASE_HI)
    other = pd.DataFrame({"model": ["n"], "threshold": [0.15], "base_value": [0.0], "aligned_value": [0.1],
                          "n_aligned_runs": [1], "n_aligned_points": [3], "quantile": [1.0], "margin": [0.05]})
    with pytest.raises(InputError, match="0 monitor thresholds match"):
        monitor_record(signal_frame(), judged, thresholds=other, metric="task", em_threshold=THRESHOLD,
                       base_hi=BASE_HI)


def test_monitor_firing_at_the_onset_checkpoint_is_late():
    # the signal crosses 0.15 at 400, the very checkpoint EM is judged at: the stop keeps an EM-positive model
    sig = signal_frame()
    sig = sig[(sig["method"] == "misaligned") & (sig["seed"] == 3)].copy()
    sig["signal"] = [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.2, 0.2, 0.2]
    rows, summary = monitor_record(sig, judged_frame(), thresholds=0.15, metric="task", em_threshold=THRESHOLD,
                                   base_hi=BASE_HI)
    row = rows.iloc[0]
    assert (row["stop_step"], row["onset_step"], row["outcome"], row["lead"], row["kept_step"]) == (
        400, 400, "late", 0, 400)
    assert row["em_at_kept"] == 18.0
    assert summary["n_late"] == 1 and summary["detection_rate"] == 0.0 and math.isnan(summary["mean_lead"])
