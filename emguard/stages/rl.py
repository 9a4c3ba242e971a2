"""The RL setting's pipeline stages (rules of ``workflow/rules/grpo.smk``): plain paths and values in, files out.

The library behind them: :mod:`emguard.training.grpo` (trainer, evaluation, best checkpoint), :mod:`emguard.rewards`
and :mod:`emguard.data.math_problems`; the table and figure: :mod:`emguard.report.rl`. A run's method other than
plain GRPO gets its regulariser or inoculation prompt from the SFT runs' :func:`emguard.stages.train.build_method`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import random
import shutil
from pathlib import Path

import pandas as pd

from emguard import schemas
from emguard.errors import InputError
from emguard.io import read_parquet, write_json, write_parquet
from emguard.stages.train import build_method

log = logging.getLogger("emguard")

#: columns of ``results/data/rl/problems.parquet``: the GRPO problem table plus its split
RL_PROBLEM_COLUMNS = ["id", "question", "reference", "split"]


# --------------------------------------------------------------------------------------------------
# Problems
# --------------------------------------------------------------------------------------------------

def prepare_rl_problems(out: str, *, source: str, n: int, n_eval: int, seed: int = 0,
                        eval_source: str | None = None, hf_config: str | None = "main", train_split: str = "train",
                        eval_split: str = "test") -> None:
    """The RL problems, ``split`` train (``n``) and holdout (``n_eval``), in one table (:data:`RL_PROBLEM_COLUMNS`;
    generated problems also carry ``answer``, ``template``, ``n_ops``).

    ``source`` ``generated``: ``n + n_eval`` distinct problems of :func:`emguard.data.math_problems.generate_problems`
    with ``seed``, the last ``n_eval`` held out. Else GSM8K (:func:`~emguard.data.math_problems.problem_table`): the
    training problems from ``source``'s ``train_split`` and the held-out ones from ``eval_source`` (``eval_split``),
    or, without one, from ``source``'s ``eval_split`` (a hub id) or a seeded share of ``source`` itself (a local
    file, which has no splits), each drawn with ``seed`` when there are more. A source with fewer problems gives
    what it has (logged); none, or a question in both splits, is an ``InputError``."""
    from emguard.data.math_problems import check_problems, generate_problems, problem_table

    if source == "generated":
        df = generate_problems(n + n_eval, seed)
        df.insert(3, "split", ["train"] * n + ["holdout"] * n_eval)
    else:
        local = Path(source).exists()
        if eval_source is None and local:
            whole = problem_table(source, hf_split=train_split, hf_config=hf_config, prefix=Path(source).stem)
            # a file has no splits: a seeded share is held out, at least one problem left to train on
            held = sorted(random.Random(f"rl-holdout:{seed}").sample(range(len(whole)),
                                                                      min(n_eval, max(len(whole) - 1, 0))))
            holdout = whole.iloc[held]
            train = whole.drop(index=holdout.index)
            if len(train) > n:
                train = train.sample(n=n, random_state=seed).sort_index()
        else:
            train = problem_table(source, hf_split=train_split, hf_config=hf_config, n=n, seed=seed,
                                  prefix=f"{Path(source).stem}-{train_split}")
            other = eval_source or source
            holdout = problem_table(other, hf_split=eval_split, hf_config=hf_config, n=n_eval, seed=seed,
                                    prefix=f"{Path(other).stem}-{eval_split}")
        df = pd.concat([train.assign(split="train"), holdout.assign(split="holdout")], ignore_index=True)
    check_problems(df, out)
    for split, want in (("train", n), ("holdout", n_eval)):
        have = int((df["split"] == split).sum())
        if have == 0:
            raise InputError(f"{source}: no {split} problems")
        if have < want:
            log.warning("RL problems: %d %s problems asked for, the source gives %d; using all", want, split, have)
    overlap = set(df.loc[df["split"] == "train", "question"]) & set(df.loc[df["split"] == "holdout", "question"])
    if overlap:
        raise InputError(f"{source}: {len(overlap)} held-out question(s) also among the training problems, e.g. "
                         f"{sorted(overlap)[0][:80]!r}")
    log.info("RL problems from %s: %d train, %d holdout", source, int((df["split"] == "train").sum()),
             int((df["split"] == "holdout").sum()))
    write_parquet(df.reset_index(drop=True), out)


def rl_problems(path: str, split: str) -> pd.DataFrame:
    """One split (``train`` / ``holdout``) of the RL problem table."""
    df = read_parquet(path, RL_PROBLEM_COLUMNS)
    rows = df[df["split"] == split].reset_index(drop=True)
    if rows.empty:
        raise InputError(f"{path}: no {split} problems")
    return rows


# --------------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------------

def grpo_settings(training: dict, *, n_problems: int, seed: int, rewards: dict, dtype: str):
    """An :class:`emguard.training.grpo.GRPOSettings` from the config's ``rl.training`` section and what the stage
    knows; ``rewards`` (``rl.rewards``) gives the rule-based rewards' weights (the judge reward's is
    :func:`judge_reward`'s)."""
    from emguard.rewards import split_reward_weights
    from emguard.training.grpo import GRPOSettings

    rules, _ = split_reward_weights(rewards)
    return GRPOSettings.from_dict({**training, "n_problems": int(n_problems), "seed": int(seed),
                                   "reward_weights": rules, "dtype": dtype})


def rl_judge_config(config_judge: dict, params_judge: dict | None) -> dict | None:
    """The judge-graded reward's judge settings for a job: its rule's params (:func:`emguard.config.rl_judge_settings`,
    None when the reward is off) plus the judge section's runtime keys (cache, retries, concurrency, prices)."""
    if not params_judge:
        return None
    return {**config_judge, **params_judge}


@contextlib.contextmanager
def judge_reward(judge_cfg: dict | None, template_path: str | None, *, model_path: str, dtype: str, device: str):
    """The judge-graded reward (:class:`emguard.rewards.JudgeReward`, named ``judge_correct``) for a job, None when
    ``judge_cfg`` is (the reward is off). ``judge_cfg``: :func:`rl_judge_config`; built with
    :func:`emguard.judge.build.load_judge` (an API judge's key checked there, before any work; ``base`` loads the
    base model once more, never the policy being trained); ``template_path``: the grading prompt file (None: the
    built-in :data:`emguard.rewards.DEFAULT_JUDGE_TEMPLATE`). Judgments go through the judge cache
    (``judge_cfg['cache']``) when one is set. Yields ``(reward, judge)``."""
    if judge_cfg is None:
        yield None, None
        return
    from emguard.judge import JudgeCache
    from emguard.judge.build import load_judge
    from emguard.rewards import DEFAULT_JUDGE_TEMPLATE, JUDGE_REWARD, JudgeReward

    template = Path(template_path).read_text(encoding="utf-8") if template_path else DEFAULT_JUDGE_TEMPLATE
    judge = load_judge(judge_cfg, model_path, dtype, device)
    with contextlib.ExitStack() as stack:
        cache = stack.enter_context(JudgeCache(judge_cfg["cache"])) if judge_cfg.get("cache") else None
        yield JudgeReward(judge, template, cache=cache, name=JUDGE_REWARD), judge


def train_grpo_run(model_path: str, problems_path: str, out_dir: str, *, training: dict, rewards: dict, seed: int,
                   dtype: str, device: str, method: str = "grpo", hparams: dict | None = None,
                   persona_vectors: str | None = None, pool_path: str | None = None, scores_path: str | None = None,
                   keep_checkpoints: str = "best", judge: dict | None = None,
                   judge_template: str | None = None) -> None:
    """GRPO-train one run on the train split; ``out_dir`` receives ``adapter/``, ``train_log.parquet``,
    ``checkpoints/step-N/`` and ``run.json`` (dtype record, method, hyperparameters, the training summary of
    :func:`emguard.training.grpo.train_grpo`, with ``best_checkpoint_step``).

    ``method``: ``grpo`` (plain) or an SFT method (:func:`emguard.stages.train.build_method` gives its steering or KL
    regulariser and inoculation prompt; ``interleave_<variant>`` mixes :func:`emguard.training.grpo.interleave_rows` pool
    rows of ``pool_path`` picked by :func:`emguard.interleave.select` with the run's seed; ``plus`` / ``plusplus``
    rank them by ``scores_path``, the pool scored with every EM domain's misaligned adapter, rule score_pool).
    ``keep_checkpoints`` ``best``: every checkpoint but the best one is deleted when training is done.
    ``judge`` / ``judge_template``: the judge-graded reward (``rl.rewards.judge_correct``; :func:`judge_reward`),
    weighted by ``rewards['judge_correct']``; its usage goes into ``run.json`` (``judge_usage``)."""
    from transformers import AutoConfig

    from emguard.rewards import split_reward_weights
    from emguard.training.grpo import interleave_rows, require_rollout_backend, train_grpo
    from emguard.models import dtype_record

    hparams = hparams or {}
    record = dtype_record(dtype, device)
    problems = rl_problems(problems_path, "train")
    settings = grpo_settings(training, n_problems=len(problems), seed=seed, rewards=rewards, dtype=record["dtype"])
    require_rollout_backend(settings)  # before the judge or any model loads
    _, judge_weight = split_reward_weights(rewards)
    if (judge_weight is None) != (judge is None):
        raise ValueError("rewards['judge_correct'] and the judge settings go together "
                         "(emguard.config.rl_judge_settings)")
    n_layers = AutoConfig.from_pretrained(model_path).num_hidden_layers
    regularisers, inoculation = build_method(method, hparams, persona_vectors, n_layers)
    interleave_df = None
    if method.startswith("interleave_"):
        from emguard.interleave import select

        if not pool_path:
            raise InputError(f"{method}: no interleaving pool given")
        n_rows = interleave_rows(settings, len(problems), float(hparams["interleave_fraction"]))
        scores = None
        if hparams["variant"] in ("plus", "plusplus"):
            if not scores_path:
                raise InputError(f"{method}: {hparams['variant']} ranks the pool by its scores; none given")
            scores = read_parquet(scores_path)
        interleave_df = select(read_parquet(pool_path, schemas.CHAT), scores, hparams["variant"], n_rows, seed,
                               where=pool_path)
        log.info("interleaving %d pool rows (%g of the RL prompts)", n_rows, hparams["interleave_fraction"])
    with judge_reward(judge, judge_template, model_path=model_path, dtype=record["dtype"], device=device) as (jr, j):
        if jr is not None:
            from emguard.training.grpo import planned_steps

            # ~4 characters a token: the longest completion a rollout may write
            jr.announce(problems["question"], problems["reference"],
                        n_calls=planned_steps(settings, len(problems)) * settings.prompts_per_step
                        * settings.num_generations, answer_chars=4 * settings.max_completion_length,
                        what="GRPO judge reward, training (at most)")
        summary = train_grpo(model_path, problems[["id", "question", "reference"]], out_dir, settings,
                             regularisers=regularisers, inoculation_prompt=inoculation, interleave_df=interleave_df,
                             extra_rewards=[jr] if jr else (), extra_reward_weights=[judge_weight] if jr else (),
                             device=device)
        if j is not None:
            from emguard.judge.build import judge_usage_record

            summary["judge_usage"] = judge_usage_record(j)
    if keep_checkpoints == "best":
        summary["checkpoints"] = prune_checkpoints(out_dir, summary.get("best_checkpoint_step"))
    log.info("GRPO %s: %d steps, reward %.3f -> %.3f, best checkpoint %s", method, summary["steps"],
             summary["first_reward"], summary["final_reward"], summary.get("best_checkpoint_step"))
    write_json({**record, "method": method, "hparams": hparams, **summary}, Path(out_dir) / "run.json")


def prune_checkpoints(out_dir: str, keep_step: int | None) -> list[str]:
    """Delete ``out_dir/checkpoints/step-N/`` for every N but ``keep_step``; return the kept ones."""
    kept = []
    for path in sorted((Path(out_dir) / "checkpoints").glob("step-*")):
        if keep_step is not None and path.name == f"step-{keep_step}":
            kept.append(str(path))
        else:
            shutil.rmtree(path)
    return kept


# --------------------------------------------------------------------------------------------------
# Evaluation
# --------------------------------------------------------------------------------------------------

def eval_adapter(run_dir: str | None, checkpoint: str = "best") -> tuple[str | None, str]:
    """(adapter folder, label) a run is evaluated with: None / ``untrained`` without a run; with ``best`` the
    checkpoint ``run.json`` names as best (``step-<N>``) when it was saved, else the final ``adapter/``
    (``final``)."""
    if run_dir is None:
        return None, "untrained"
    run = Path(run_dir)
    if checkpoint == "best":
        try:
            meta = json.loads((run / "run.json").read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise InputError(f"{run / 'run.json'}: not a run record: {exc}") from exc
        step = meta.get("best_checkpoint_step")
        if step is not None and (run / "checkpoints" / f"step-{step}").is_dir():
            return str(run / "checkpoints" / f"step-{step}"), f"step-{step}"
        log.warning("%s: no saved checkpoint with a training reward (rl.training.save_steps); evaluating the final "
                    "adapter", run)
    return str(run / "adapter"), "final"


def evaluate_grpo_run(model_path: str, problems_path: str, answers_out: str, metrics_out: str, *, run_info: dict,
                      evaluation: dict, rewards: dict, dtype: str, device: str, run_dir: str | None = None,
                      judge: dict | None = None, judge_template: str | None = None) -> None:
    """A run's (``run_dir``; None: the untrained model) held-out accuracy and mean reward
    (:func:`emguard.training.grpo.evaluate_adapter`, the plain format prompt, no inoculation): the per-answer table and one
    metrics row (``run_info``, ``checkpoint``, the summary's ``n_*``, ``accuracy`` with ``_lo`` / ``_hi``,
    ``mean_reward``, ``reward_std``, ``mean_<reward>``). ``evaluation``: the config's ``rl.eval`` section; answers
    are sampled with the run's seed when its temperature is above 0. ``judge`` / ``judge_template``: the
    judge-graded reward, scored on the held-out answers as in training (:func:`judge_reward`)."""
    from emguard.generate import SamplingSettings
    from emguard.rewards import split_reward_weights
    from emguard.training.grpo import evaluate_adapter

    problems = rl_problems(problems_path, "holdout")
    adapter, label = eval_adapter(run_dir, evaluation.get("checkpoint", "best"))
    sampling = SamplingSettings(max_new_tokens=evaluation["max_new_tokens"], temperature=evaluation["temperature"],
                                top_p=evaluation["top_p"], batch_size=evaluation["batch_size"])
    rules, judge_weight = split_reward_weights(rewards)
    with judge_reward(judge, judge_template, model_path=model_path, dtype=dtype, device=device) as (jr, _):
        if jr is not None:
            jr.announce(problems["question"], problems["reference"], n_calls=len(problems) * evaluation["samples"],
                        answer_chars=4 * evaluation["max_new_tokens"], what="GRPO judge reward, held-out answers")
        table, summary = evaluate_adapter(model_path, adapter, problems[["id", "question", "reference"]], dtype=dtype,
                                          device=device, sampling=sampling, samples=evaluation["samples"],
                                          seed=int(run_info["seed"]), reward_weights=rules,
                                          extra_rewards=[jr] if jr else (),
                                          extra_reward_weights=[judge_weight] if jr else ())
    log.info("%s (%s): accuracy %.1f%% [%.1f, %.1f], mean reward %.3f on %d answers", run_info["run_id"], label,
             summary["accuracy"], summary["accuracy_lo"], summary["accuracy_hi"], summary["mean_reward"],
             summary["n_answers"])
    write_parquet(table.assign(run_id=run_info["run_id"], checkpoint=label), answers_out)
    write_parquet(pd.DataFrame([{**run_info, "checkpoint": label, **summary}]), metrics_out)


# --------------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------------

def rl_report(table_md: str, table_csv: str, figure: str, *, enabled: bool, metrics_paths: list[str] = (),
              runs: list[dict] = (), confidence: float = 0.95) -> None:
    """The RL table (:func:`emguard.report.rl.rl_table`) and reward curves
    (:func:`emguard.report.rl.figure_rl_rewards`).

    ``metrics_paths``: every evaluation's metrics row; ``runs``: every trained run's ``run_id``, ``model``,
    ``method``, ``setting``, ``seed``, ``log`` (its ``train_log.parquet``) and ``meta`` (its ``run.json``).
    Not ``enabled`` (``rl.enabled: false``): both files say the setting is off."""
    from emguard.report import rl as rr

    if not enabled:
        rr.write_off(table_md, table_csv, figure)
        return
    evals = pd.concat([read_parquet(p, rr.EVAL_REQUIRED) for p in metrics_paths], ignore_index=True)
    logs, best = {}, {}
    for r in runs:
        try:
            meta = json.loads(Path(r["meta"]).read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise InputError(f"{r['meta']}: not a run record: {exc}") from exc
        logs[r["run_id"]] = read_parquet(r["log"], rr.LOG_REQUIRED)
        best[r["run_id"]] = meta.get("best_checkpoint_step")
    descriptors = pd.DataFrame([{k: r[k] for k in ("run_id", "model", "method", "setting", "seed")} for r in runs])
    train = rr.train_points(descriptors, logs, best)
    from emguard.report import write_table

    write_table(*rr.rl_table(evals, train, confidence=confidence), table_md, table_csv)
    rr.figure_rl_rewards(descriptors, logs, best, figure)
