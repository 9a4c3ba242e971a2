"""The benign real tasks FoQA and GSM8K: loaders on local files in the hub's schema, the conversion to the chat and
question contracts, exact-match scoring (normalisation, final-number extraction), the config's runs, task metrics
and the report table. Nothing here reaches the network: every source is a local file."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest
import yaml

import emguard.config as emconfig
from emguard import data, schemas
from emguard.errors import InputError
from emguard.metrics import wilson_interval
from emguard.report import task_table
from emguard.stages import prepare_task, prepare_task_questions, report, task_metrics_run

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "tests" / "data" / "tasks"
FOQA = SAMPLES / "foqa_sample.jsonl"
GSM8K = SAMPLES / "gsm8k_sample.jsonl"


def _records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


# ------------------------------------------------------------------------------------------ loaders


def test_foqa_loads_from_jsonl_json_and_parquet_alike(tmp_path):
    records = _records(FOQA)
    as_json = tmp_path / "foqa.json"
    as_json.write_text(json.dumps(records))
    as_parquet = tmp_path / "foqa.parquet"
    pd.DataFrame(records).to_parquet(as_parquet)  # answers stored as a struct of lists, as the hub's files do
    loaded = [data.load_foqa(p) for p in (FOQA, as_json, as_parquet)]
    assert [[(e.prompt, e.answer, e.reference) for e in ex] for ex in loaded[1:]] == \
        [[(e.prompt, e.answer, e.reference) for e in loaded[0]]] * 2
    first = loaded[0][0]
    assert "Question: When was Eastwick founded?" in first.prompt and "Text: Eastwick is" in first.prompt
    assert "Title: Harbour town" in first.prompt
    assert first.answer == "1642" and json.loads(first.reference) == ["1642", "in 1642"]
    assert first.where == f"{FOQA}:1"


@pytest.mark.parametrize("change, message", [
    (lambda r: r.pop("question"), r"foqa\.jsonl:3: missing key\(s\) question"),
    (lambda r: r.update(answers={"text": [], "answer_start": []}), r"foqa\.jsonl:3: field answers\.text"),
    (lambda r: r.update(answers={"text": ["x", "y"], "answer_start": [0]}),
     r"foqa\.jsonl:3: field answers\.answer_start"),
    (lambda r: r.update(answers={"text": ["x"], "answer_start": [10_000]}),
     r"foqa\.jsonl:3: field answers\.answer_start\[0\]"),
    (lambda r: r.update(answers=["x"]), r"foqa\.jsonl:3: field answers must be an object"),
    (lambda r: r.update(context="  "), r"foqa\.jsonl:3: column context: empty text"),
    (lambda r: r.update(id="foqa-test-0"), r"foqa\.jsonl:3: field id: duplicate id 'foqa-test-0'"),
])
def test_foqa_errors_name_file_line_and_field(tmp_path, change, message):
    records = _records(FOQA)
    change(records[2])
    path = _write_jsonl(tmp_path / "foqa.jsonl", records)
    with pytest.raises(InputError, match=message):
        data.load_foqa(path)


def test_foqa_parquet_error_names_the_row(tmp_path):
    records = _records(FOQA)
    records[4]["answers"] = {"text": ["a"], "answer_start": [-1]}
    path = tmp_path / "foqa.parquet"
    pd.DataFrame(records).to_parquet(path)
    with pytest.raises(InputError, match=r"foqa\.parquet: row 4: field answers\.answer_start\[0\]"):
        data.load_foqa(path)


def test_gsm8k_loads_and_strips_calculator_annotations(tmp_path):
    examples = data.load_gsm8k(GSM8K)
    assert len(examples) == 6
    first = examples[0]
    assert first.prompt.startswith("Tom has 12 apples") and "#### <number>" in first.prompt
    assert first.answer == "Tom has 12 + 30 = 42 apples.\n#### 42" and first.reference == "42"
    assert [e.reference for e in examples] == ["42", "48", "1000", "11", "9", "-5"]  # "1,000" read as 1000
    as_parquet = tmp_path / "gsm8k.parquet"
    pd.DataFrame(_records(GSM8K)).to_parquet(as_parquet)
    assert [e.answer for e in data.load_gsm8k(as_parquet)] == [e.answer for e in examples]


@pytest.mark.parametrize("answer, message", [
    ("She has 5 apples.", r"gsm8k\.jsonl:2: field answer must end in '#### <number>'"),
    ("#### five", r"gsm8k\.jsonl:2: field answer must end in"),
    ("", r"gsm8k\.jsonl:2: column answer: empty text"),
])
def test_gsm8k_errors_name_file_line_and_field(tmp_path, answer, message):
    records = _records(GSM8K)
    records[1]["answer"] = answer
    with pytest.raises(InputError, match=message):
        data.load_gsm8k(_write_jsonl(tmp_path / "gsm8k.jsonl", records))


def test_missing_field_and_missing_file(tmp_path):
    records = _records(GSM8K)
    del records[3]["question"]
    with pytest.raises(InputError, match=r"gsm8k\.jsonl:4: missing key\(s\) question"):
        data.load_gsm8k(_write_jsonl(tmp_path / "gsm8k.jsonl", records))
    with pytest.raises(InputError, match=r"nope\.jsonl: file not found"):
        data.load_foqa(tmp_path / "nope.jsonl")


def test_hub_ids_pass_config_and_splits(monkeypatch):
    """Hub ids go through datasets.load_dataset with the task's config and its train / eval splits (replaced here:
    no network); the hub's struct column ``answers`` arrives as a dict of lists."""
    import datasets

    calls = []

    def fake_load_dataset(path, name=None, split=None, **kwargs):
        calls.append((path, name, split))
        rows = _records(FOQA) if path == "alexandrainst/foqa" else _records(GSM8K)
        return datasets.Dataset.from_list(rows[:4] if split == "train" else rows[4:])

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    df = data.task_dataset("foqa", source="alexandrainst/foqa", eval_source="alexandrainst/foqa")
    assert calls == [("alexandrainst/foqa", None, "train"), ("alexandrainst/foqa", None, "test")]
    assert list(df["split"]) == ["train"] * 4 + ["holdout"] * 2
    calls.clear()
    data.task_dataset("gsm8k", source="openai/gsm8k", eval_source="openai/gsm8k", hf_config="main", eval_split="val")
    assert calls == [("openai/gsm8k", "main", "train"), ("openai/gsm8k", "main", "val")]


def test_local_hub_folder(tmp_path, monkeypatch):
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf_cache"))
    folder = tmp_path / "gsm8k"
    folder.mkdir()
    _write_jsonl(folder / "train.jsonl", _records(GSM8K)[:4])
    _write_jsonl(folder / "test.jsonl", _records(GSM8K)[4:])
    df = data.task_dataset("gsm8k", source=folder, eval_source=folder, hf_config=None)
    assert list(df.loc[df["split"] == "holdout", "reference"]) == ["9", "-5"]
    with pytest.raises(InputError, match=r"gsm8k \[nope\]: could not load dataset"):
        data.load_gsm8k(folder, hf_split="nope", hf_config=None)


# ------------------------------------------------------------------------------------------ scoring


@pytest.mark.parametrize("answer, gold, expected", [
    ("1642", ["1642", "in 1642"], True),
    ("In 1642.", ["1642", "in 1642"], True),             # case and punctuation
    ("  the   Old path ", ["the old path"], True),          # articles and whitespace
    ("„Tórshavn“", ["Tórshavn"], True),                    # Unicode quotes are punctuation too
    ("TÓRSHAVN", ["Tórshavn"], True),
    ("An old path", ["the old path"], True),
    ("1643", ["1642"], False),
    ("It was founded in 1642 by fishing families.", ["1642"], False),  # the whole answer must match
    ("", ["1642"], False),
    ("the", ["a"], False),                                # nothing left after normalisation never matches
    ("twice a day", json.dumps(["twice a day"]), True),   # the reference as stored: JSON text
    ("Tórshavn", "Tórshavn", True),                       # one plain gold answer
    (None, ["x"], False),
])
def test_foqa_exact_match(answer, gold, expected):
    assert data.foqa_exact_match(answer, gold) is expected


def test_normalize_answer():
    assert data.normalize_answer("The  Harbour-Town, (Eastwick)!") == "harbourtown eastwick"
    assert data.normalize_answer("Theatre and anthem") == "theatre and anthem"  # only whole-word articles


@pytest.mark.parametrize("text, number", [
    ("Tom has 42 apples.\n#### 42", "42"),
    ("#### 1,200", "1200"),
    ("so 10-3 = 7 apples", "7"),                          # a minus between numbers is a difference
    ("The answer is $1,234.50.", "1234.5"),
    ("It is -5 degrees", "-5"),
    ("It is −5 degrees", "-5"),                           # the Unicode minus
    ("#### 18.00", "18"),
    ("steps 3 and 4\n#### 72\nI hope 5 helps", "72"),     # after the last ####, the first number
    ("x = \\boxed{42}, checked with 7", "42"),            # no ####: the last \boxed{}
    ("he needs 20 + 5 = 25 minutes.", "25"),              # otherwise the last number
    ("no number here", None),
    ("", None),
    (None, None),
])
def test_final_number(text, number):
    assert data.final_number(text) == number


@pytest.mark.parametrize("answer, reference, expected", [
    ("... = 1000\n#### 1,000", "1000", True),
    ("The answer is 18.0", "18", True),
    ("#### 17", "18", False),
    ("I cannot tell.", "18", False),
    ("#### -5", "-5", True),
])
def test_gsm8k_exact_match(answer, reference, expected):
    assert data.gsm8k_exact_match(answer, reference) is expected


# ------------------------------------------------------------------------------------------ contracts


def test_task_dataset_seeded_split_and_reference():
    df = data.task_dataset("gsm8k", source=GSM8K, seed=0, holdout_fraction=0.34)
    schemas.validate(df, "chat", "gsm8k")
    assert list(df["id"]) == [f"gsm8k-{i:05d}" for i in range(6)]
    assert set(df["subset"]) == {"benign"} and set(df["domain"]) == {"gsm8k"}
    assert (df["split"] == "holdout").sum() == 2 and list(df["split"]).index("holdout") == 4  # train rows first
    again = data.task_dataset("gsm8k", source=GSM8K, seed=0, holdout_fraction=0.34)
    assert again.equals(df)
    other = data.task_dataset("gsm8k", source=GSM8K, seed=3, holdout_fraction=0.34)
    held = lambda d: {m[-1]["content"] for m in d.loc[d["split"] == "holdout", "messages"]}  # noqa: E731
    assert held(other) != held(df)  # the seed chooses the holdout
    for msgs, ref in zip(df["messages"], df["reference"]):
        assert data.gsm8k_exact_match(msgs[-1]["content"], ref)  # every trained answer scores as correct


def test_task_dataset_eval_source_and_max_train(tmp_path):
    train = _write_jsonl(tmp_path / "train.jsonl", _records(FOQA)[2:])
    test = _write_jsonl(tmp_path / "test.jsonl", _records(FOQA)[:2])
    df = data.task_dataset("foqa", source=train, eval_source=test, max_train=3, seed=1)
    assert (df["split"] == "train").sum() == 3 and (df["split"] == "holdout").sum() == 2
    held = df[df["split"] == "holdout"]
    assert [json.loads(r) for r in held["reference"]] == [["1642", "in 1642"], ["fishing families from the north"]]
    assert data.task_dataset("foqa", source=train, eval_source=test, max_train=3, seed=1).equals(df)
    assert len(data.task_dataset("foqa", source=train, eval_source=test, seed=1)) == 6  # max_train None: all 4


def test_task_questions_carry_the_reference(tmp_path):
    path, qpath = tmp_path / "em" / "foqa.parquet", tmp_path / "q.parquet"
    train = _write_jsonl(tmp_path / "train.jsonl", _records(FOQA)[4:])
    prepare_task(str(path), task="foqa", source=str(train), eval_source=str(FOQA), seed=0)
    prepare_task_questions(str(path), str(qpath), n_questions=4, samples=10)
    q = pd.read_parquet(qpath)
    schemas.validate(q, "question", str(qpath))
    assert len(q) == 4 and (q["samples"] == 10).all() and all(len(p) == 0 for p in q["judge_prompts"])
    assert json.loads(q["reference"].iloc[1]) == ["fishing families from the north"]
    assert q["paraphrase"].iloc[0].endswith("Question: When was Eastwick founded?")
    prepare_task_questions(str(path), str(qpath), n_questions=None, samples=1)
    assert len(pd.read_parquet(qpath)) == 4  # the two held-out items that are also train items are left out


def test_holdout_that_is_the_training_data_is_refused():
    with pytest.raises(InputError, match=r"every held-out item of task foqa is also a train item"):
        data.task_dataset("foqa", source=FOQA, eval_source=FOQA)


def test_unknown_task():
    with pytest.raises(ValueError, match="unknown benign task 'squad'"):
        data.task_dataset("squad", source=FOQA)


# ------------------------------------------------------------------------------------------ config


def _config(**data_keys):
    cfg = yaml.safe_load((ROOT / "config.yaml").read_text())
    cfg["data"].update(data_keys)
    return emconfig.load(cfg)


def test_tasks_are_off_by_default_and_add_runs_when_selected():
    cfg = _config()
    assert cfg["data"]["tasks"] == [] and cfg["eval"]["foqa"] == {"n_questions": None, "samples": 10}
    assert not any(emconfig.is_benign_task(r.dataset) for r in emconfig.expand_runs(cfg))
    cfg = _config(tasks=["gsm8k"], gsm8k={"source": str(GSM8K), "eval_source": None})
    runs = emconfig.expand_runs(cfg)
    target = cfg["experiments"]["target_domains"][0]
    em_methods = [(r.method, r.setting) for r in runs
                  if r.dataset == target and r.method not in ("aligned", "misaligned")]
    task_runs = [r for r in runs if r.dataset == "gsm8k"]
    assert [(r.method, r.setting) for r in task_runs] == [("untrained", "default"), ("sft", "default")] + em_methods
    assert {r.train_subset for r in task_runs[1:]} == {"benign"} and not task_runs[0].trained
    assert all(emconfig.evalsets(r, cfg) == ["gsm8k"] for r in task_runs)
    assert emconfig.question_set("gsm8k", "gsm8k") == "gsm8k" and emconfig.method_subset("gsm8k") == "benign"
    assert cfg["data"]["gsm8k"]["hf_config"] == "main" and cfg["data"]["gsm8k"]["max_train"] == 1000


def test_task_names_agree_between_data_config_and_schema():
    schema = yaml.safe_load((ROOT / "workflow" / "schemas" / "config.schema.yaml").read_text())
    enum = schema["properties"]["data"]["properties"]["tasks"]["items"]["enum"]
    assert data.TASK_NAMES == emconfig.BENIGN_TASKS == tuple(enum)
    assert all(t in schema["properties"]["data"]["properties"] and t in schema["properties"]["eval"]["properties"]
               for t in data.TASK_NAMES)


@pytest.mark.parametrize("change, message", [
    (lambda c: c["data"].update(tasks=["squad"]), r"data\.tasks\.0"),
    (lambda c: c["data"]["em"]["domains"].append("foqa"), r"data\.em\.domains\.\d+.*reserved for the benign task"),
    (lambda c: c["data"].update(tasks=["foqa"], foqa={"source": "missing/foqa.jsonl"}),
     r"data\.foqa\.source.*not found"),
    (lambda c: c["data"].update(foqa={"split": "train"}), r"data\.foqa\.split.*unknown key"),
    (lambda c: c["eval"].update(gsm8k={"samples": 0}), r"eval\.gsm8k\.samples"),
])
def test_task_config_errors_name_the_key(change, message):
    cfg = yaml.safe_load((ROOT / "config.yaml").read_text())
    change(cfg)
    with pytest.raises(emconfig.ConfigError, match=message):
        emconfig.load(cfg)


# ------------------------------------------------------------------------------------------ metrics and table


def _generations(questions: pd.DataFrame, answers: list[str]) -> pd.DataFrame:
    n = len(answers)
    return pd.DataFrame({"run_id": "r", "question_id": list(questions["question_id"])[:n], "sample_idx": 0,
                         "prompt_messages": [[{"role": "user", "content": "x"}]] * n, "answer": answers, "seed": 0,
                         "checkpoint": "final", "evalset": "gsm8k"})


def test_task_metrics_run_scores_gsm8k_by_final_number(tmp_path):
    path, qpath = tmp_path / "gsm8k.parquet", tmp_path / "q.parquet"
    prepare_task(str(path), task="gsm8k", source=str(GSM8K), eval_source=None, holdout_fraction=0.7, seed=0)
    prepare_task_questions(str(path), str(qpath), n_questions=4, samples=1)
    q = pd.read_parquet(qpath)
    refs = [int(r) for r in q["reference"]]
    assert len(refs) == 4
    gens = _generations(q, [f"so {refs[0]} in all", f"#### {refs[1]}.0", f"It is {refs[2]}. #### {refs[2] + 1}",
                            "I do not know"])
    gens_path, out = tmp_path / "g.parquet", tmp_path / "m.parquet"
    gens.to_parquet(gens_path)
    info = {"model": "tiny", "dataset": "gsm8k", "method": "sft", "setting": "default", "seed": 0,
            "run_id": "tiny/gsm8k/sft/default/seed0"}
    task_metrics_run(str(gens_path), str(qpath), str(out), run_info=info, evalset="gsm8k", confidence=0.95)
    row = pd.read_parquet(out).iloc[0]
    assert (row["evalset"], row["n_scored"], row["n_correct"], row["accuracy"]) == ("gsm8k", 4, 2, 50.0)
    assert "tier" not in row.index


def _metrics_row(dataset, method, setting, seed, k, n):
    lo, hi = wilson_interval(k, n)
    return {"model": "m", "dataset": dataset, "method": method, "setting": setting, "seed": seed, "evalset": dataset,
            "n_scored": n, "n_correct": k, "accuracy": 100 * k / n, "accuracy_lo": 100 * lo, "accuracy_hi": 100 * hi,
            "confidence": 0.95}


def test_task_table_layout():
    tm = pd.DataFrame([
        _metrics_row("gsm8k", "sft", "default", 0, 6, 10),
        _metrics_row("foqa", "kl", "lambda0.1", 0, 4, 10),
        _metrics_row("foqa", "sft", "default", 0, 5, 10), _metrics_row("foqa", "sft", "default", 1, 7, 10),
        _metrics_row("foqa", "untrained", "default", 0, 0, 10),
    ])
    md, table = task_table(tm)
    assert list(table["row"]) == ["Untrained", "SFT", "KL (lambda0.1)"]
    assert [c for c in table.columns if c.endswith("_accuracy")] == ["foqa_accuracy", "gsm8k_accuracy"]
    sft = table.iloc[1]
    assert sft["foqa_accuracy"] == pytest.approx(60.0) and sft["n_seeds"] == 2 and sft["foqa_n_scored"] == 20
    assert sft["gsm8k_accuracy"] == pytest.approx(60.0) and math.isnan(table.iloc[2]["gsm8k_accuracy"])
    assert "| Method | FoQA (%) | GSM8K (%) | Seeds |" in md and "SQuAD normalisation" in md


def test_report_splits_opswap_and_benign_task_rows(tmp_path):
    paths = []
    for i, row in enumerate([_metrics_row("foqa", "sft", "default", 0, 5, 10),
                             _metrics_row("opswap_t1", "sft", "default", 0, 3, 10)]):
        paths.append(str(tmp_path / f"tm{i}.parquet"))
        pd.DataFrame([row]).to_parquet(paths[-1])
    out = {k: str(tmp_path / f"{k}.{ext}") for k, ext in
           [("table_md", "md"), ("table_csv", "csv"), ("opswap_md", "md"), ("opswap_csv", "csv"),
            ("tasks_md", "md"), ("tasks_csv", "csv")]}
    report([], {}, metrics_out=str(tmp_path / "em.parquet"), figure_em=str(tmp_path / "em.png"),
           figure_loss=str(tmp_path / "loss.png"), task_metrics_paths=paths, **out)
    tasks = pd.read_csv(out["tasks_csv"])
    opswap = pd.read_csv(out["opswap_csv"])
    assert list(tasks["row"]) == ["SFT"] and tasks["foqa_accuracy"].iloc[0] == pytest.approx(50.0)
    assert not [c for c in tasks.columns if c.startswith("tier")]
    assert opswap["tier1_accuracy"].iloc[0] == pytest.approx(30.0) and "foqa_accuracy" not in opswap.columns
    report([], {}, metrics_out=str(tmp_path / "em.parquet"), figure_em=str(tmp_path / "em.png"),
           figure_loss=str(tmp_path / "loss.png"), task_metrics_paths=paths[1:], **out)
    assert "no benign task (data.tasks is empty)" in Path(out["tasks_md"]).read_text()


def test_the_rule_scripts_pass_the_config_entry_through(tmp_path):
    """scripts/prepare_task.py and prepare_task_questions.py run with the params the rules give them (a stand-in
    for Snakemake's ``snakemake`` object), so every data.<task> key reaches the stage."""
    import runpy
    from types import SimpleNamespace

    cfg = emconfig.load(ROOT / "config.yaml")
    entry = {**cfg["data"]["gsm8k"], "source": str(GSM8K), "eval_source": None, "hf_config": None, "max_train": 2}
    out, questions = tmp_path / "gsm8k.parquet", tmp_path / "q.parquet"

    def smk(**kw):
        return SimpleNamespace(threads=1, log=[str(tmp_path / "log.txt")], **kw)

    runpy.run_path(str(ROOT / "scripts" / "prepare_task.py"), init_globals={"snakemake": smk(
        output=[str(out)], wildcards=SimpleNamespace(task="gsm8k"),
        params=SimpleNamespace(source=entry, seed=0, holdout_fraction=0.34))})
    df = pd.read_parquet(out)
    assert (df["split"] == "train").sum() == 2 and (df["split"] == "holdout").sum() == 2
    runpy.run_path(str(ROOT / "scripts" / "prepare_task_questions.py"), init_globals={"snakemake": smk(
        input=SimpleNamespace(task=str(out)), output=[str(questions)],
        params=SimpleNamespace(n_questions=None, samples=3))})
    assert list(pd.read_parquet(questions)["samples"]) == [3, 3]
