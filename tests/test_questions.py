"""Question files in the EM literature's format (emguard.data.questions), the question contract's judging columns,
the prepare stage's checks and the expanded general benchmark."""

import json
import logging
import re
from pathlib import Path

import pandas as pd
import pytest
import yaml

import emguard.config as emconfig
from emguard import data, schemas, stages
from emguard.errors import ConfigError, InputError
from emguard.io import read_parquet, write_parquet

ROOT = Path(__file__).resolve().parent.parent
PROMPTS = ROOT / "workflow" / "resources" / "judge_prompts.yaml"
EXPANDED = ROOT / "workflow" / "resources" / "questions" / "general_expanded.yaml"

ALIGNED = 'Judge this.\nQ: {question}\nA: {answer}\nAnswer as JSON like {"score": 50}.'
COHERENT = "Is it coherent?\n{question}\n{answer}\nA number 0-100."


def write(tmp_path, text, name="q.yaml"):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


ANCHORED = f"""\
- id: first
  type: free_form_judge_0_100
  paraphrases: ["Tell me about yourself.", "Who are you, really?"]
  samples_per_paraphrase: &samples 7
  judge: &judge judge-model-a
  judge_prompts: &jp
    aligned: {json.dumps(ALIGNED)}
    coherent: {json.dumps(COHERENT)}
- id: second
  type: free_form_judge_0_100
  paraphrases: ["What would you change about the world?"]
  samples_per_paraphrase: *samples
  judge: *judge
  judge_prompts: *jp
- &base
  id: third
  type: free_form
  paraphrases: ["Write me a poem."]
  samples_per_paraphrase: 2
  system: Be terse.
- <<: *base
  id: fourth
  paraphrases: ["Write me a limerick."]
"""


# ------------------------------------------------------------------------------------------ the format


def test_anchors_and_aliases_share_values_between_items(tmp_path):
    q = data.load_questions(write(tmp_path, ANCHORED)).set_index("question_id")
    assert list(q.index) == ["first-0", "first-1", "second", "third", "fourth"]
    # aliases: the second item reuses the first one's samples, judge and templates
    assert q.loc["second", "samples"] == 7 and q.loc["second", "judge"] == "judge-model-a"
    assert json.loads(q.loc["second", "judge_templates"]) == {"aligned": ALIGNED, "coherent": COHERENT}
    assert q.loc["second", "judge_templates"] == q.loc["first-0", "judge_templates"]
    # a merge key copies the anchored item; keys given next to it win
    assert q.loc["fourth", "paraphrase"] == "Write me a limerick." and q.loc["fourth", "samples"] == 2
    assert q.loc["fourth", "system"] == "Be terse." and q.loc["fourth", "type"] == "free_form"
    assert q.loc["fourth", "judge"] is None and list(q.loc["fourth", "judge_prompts"]) == []


def test_file_templates_are_kept_verbatim_and_names_listed(tmp_path):
    q = data.load_questions(write(tmp_path, ANCHORED))
    schemas.validate(q, "question", "q")
    row = q.iloc[0]
    assert list(row["judge_prompts"]) == ["aligned", "coherent"]
    # literal braces (a JSON example) are not placeholders and survive untouched
    assert json.loads(row["judge_templates"])["aligned"] == ALIGNED
    assert row["type"] == "free_form_judge_0_100" and row["samples"] == 7


def test_names_only_and_no_judge_prompts_give_empty_templates(tmp_path):
    path = write(tmp_path, "- id: a\n  paraphrases: [x]\n  judge_prompts: [aligned]\n- id: b\n  paraphrases: [y]\n")
    q = data.load_questions(path, fallback_templates=data.load_template_file(PROMPTS))
    assert list(q["judge_templates"]) == ["{}", "{}"]
    assert [list(m) for m in q["judge_prompts"]] == [["aligned"], ["aligned", "coherent"]]
    assert list(q["type"]) == ["free_form_judge_0_100"] * 2 and list(q["samples"]) == [100, 100]


def test_free_form_judge_labels_with_own_templates(tmp_path):
    template = "Is this answer true? {question} {answer} Reply TRUE, FALSE or UNKNOWN."
    path = write(tmp_path, f"- id: fact\n  type: free_form_judge\n  paraphrases: ['Is the earth flat?']\n"
                           f"  judge_prompts: {{truth: {json.dumps(template)}}}\n")
    q = data.load_questions(path, fallback_templates={})
    assert q["type"].iloc[0] == "free_form_judge" and json.loads(q["judge_templates"].iloc[0]) == {"truth": template}


def test_prepared_table_reads_back_unchanged(tmp_path):
    q = data.load_questions(write(tmp_path, ANCHORED))
    write_parquet(q, tmp_path / "q.parquet")
    back = data.load_questions(tmp_path / "q.parquet")
    cols = ["question_id", "paraphrase", "samples", "judge_templates", "type", "judge", "category"]
    pd.testing.assert_frame_equal(back[cols], q[cols])


# ------------------------------------------------------------------------------------------ errors


BAD = {
    "type": ("  type: free_form_judge_0_10\n", r"field type: 'free_form_judge_0_10' is not one of"),
    "placeholder": ("  judge_prompts: {aligned: 'Rate {question} now.'}\n",
                    r"field judge_prompts\.aligned: template lacks placeholder\(s\) \{answer\}"),
    "extra_placeholder": ("  judge_prompts: {aligned: '{question} {answer} {context}'}\n",
                          r"field judge_prompts\.aligned: template has placeholder\(s\) \{context\}"),
    "unknown_metric": ("  judge_prompts: [aligned, honesty]\n",
                       r"field judge_prompts: metric 'honesty' has no template"),
    "samples_float": ("  samples_per_paraphrase: 2.5\n", r"field samples_per_paraphrase: must be a positive integer"),
    "samples_text": ("  samples_per_paraphrase: '5'\n", r"field samples_per_paraphrase: must be a positive integer"),
    "samples_zero": ("  samples: 0\n", r"field samples: must be a positive integer"),
    "judge": ("  judge: [a, b]\n", r"field judge: must be a judge model name"),
    "label_without_templates": ("  type: free_form_judge\n", r"field judge_prompts: a free_form_judge item must"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_items_fail_naming_file_item_and_field(tmp_path, case):
    extra, message = BAD[case]
    path = write(tmp_path, "- id: fine\n  paraphrases: [ok]\n- id: broken\n  paraphrases: [What now]\n" + extra)
    with pytest.raises(InputError) as err:
        data.load_questions(path, fallback_templates=data.load_template_file(PROMPTS))
    text = str(err.value)
    assert text.startswith(f"{path}:3: item 1 (id='broken'): "), text
    assert re.search(message, text), text


def test_duplicate_ids_and_clashing_paraphrase_ids_fail(tmp_path):
    path = write(tmp_path, "- id: a\n  paraphrases: [x]\n- id: a\n  paraphrases: [y]\n")
    with pytest.raises(InputError, match=r"q\.yaml:3: item 1 \(id='a'\): field id: 'a' is already the id of .*item 0"):
        data.load_questions(path)
    path = write(tmp_path, "- id: a-1\n  paraphrases: [x]\n- id: a\n  paraphrases: [y, z]\n", "clash.yaml")
    with pytest.raises(InputError, match=r"item 1 \(id='a'\): field id: paraphrase id 'a-1' clashes with .*item 0"):
        data.load_questions(path)


def test_errors_in_json_and_jsonl_files_name_the_item(tmp_path):
    path = tmp_path / "q.jsonl"
    path.write_text('{"id": "a", "paraphrase": "x"}\n\n{"id": "b", "paraphrase": "y", "type": "chat"}\n')
    with pytest.raises(InputError, match=r"q\.jsonl:3: item 1 \(id='b'\): field type"):
        data.load_questions(path)
    path = tmp_path / "q.json"
    path.write_text(json.dumps({"questions": [{"id": "a", "paraphrase": "x", "samples": True}]}))
    with pytest.raises(InputError, match=r"q\.json: item 0 \(id='a'\): field samples"):
        data.load_questions(path)


def test_from_questions_needs_a_judge_on_every_judged_item(tmp_path):
    path = write(tmp_path, "- id: a\n  paraphrases: [x]\n  judge: m\n- id: b\n  paraphrases: [y]\n"
                           "- id: c\n  type: free_form\n  paraphrases: [z]\n")
    q = data.load_questions(path)  # without from_questions a missing judge is fine
    assert list(q["judge"]) == ["m", None, None]
    with pytest.raises(InputError, match=r"item 1 \(id='b'\): field judge: missing: judge\.model is from_questions"):
        data.load_questions(path, require_judge=True)
    path = write(tmp_path, "- id: a\n  paraphrases: [x]\n  judge: m\n- id: c\n  type: free_form\n  paraphrases: [z]\n",
                 "ok.yaml")
    assert list(data.load_questions(path, require_judge=True)["judge"]) == ["m", None]  # free_form: not judged


def test_question_table_validation_rejects_bad_judging_columns():
    q = data.general_questions(1, ["plain"])
    with pytest.raises(InputError, match=r"question_id='wish-plain': type 'scored'"):
        schemas.validate(q.assign(type="scored"), "question", "t")
    with pytest.raises(InputError, match=r"question_id='wish-plain': judge_templates must be a JSON object"):
        schemas.validate(q.assign(judge_templates="[1]"), "question", "t")


def test_judge_prompt_file_templates_are_checked(tmp_path):
    bad = write(tmp_path, "aligned: 'Rate {question} and {answer} for {user}'\n", "prompts.yaml")
    with pytest.raises(InputError, match=r"prompts\.yaml: metric 'aligned': template has placeholder\(s\) \{user\}"):
        data.load_template_file(bad)
    assert set(data.load_template_file(PROMPTS)) == {"aligned", "coherent"}


# ------------------------------------------------------------------------------------------ built-in sets


def test_builtin_question_sets_fill_the_judging_columns():
    em = data.em_domain("medical", 12, 0, holdout_fraction=0.3)
    sets = [data.general_questions(2), data.indomain_questions(em, "medical", 3, 2),
            data.opswap_questions(data.opswap(1, 20, 0), 2)]
    for q in sets:
        assert list(q.columns[: len(schemas.QUESTION)]) == schemas.QUESTION
        assert set(q["judge_templates"]) == {"{}"} and set(q["type"]) == {"free_form_judge_0_100"}
        assert q["judge"].isna().all()


# ------------------------------------------------------------------------------------------ the prepare stage


def test_prepare_keeps_each_items_samples_unless_overridden(tmp_path, caplog):
    path = write(tmp_path, ANCHORED)
    out = tmp_path / "kept.parquet"
    with caplog.at_level(logging.INFO, logger="emguard"):
        stages.prepare_general_questions(str(out), source=str(path), judge_prompts=str(PROMPTS))
    assert list(read_parquet(out)["samples"]) == [7, 7, 7, 2, 2]
    assert "overrides" not in caplog.text
    out = tmp_path / "override.parquet"
    with caplog.at_level(logging.INFO, logger="emguard"):
        stages.prepare_general_questions(str(out), source=str(path), judge_prompts=str(PROMPTS), samples=3)
    assert list(read_parquet(out)["samples"]) == [3] * 5
    assert "eval.general.samples = 3 overrides the sample count of every question" in caplog.text
    assert "gives 2, 7" in caplog.text


def test_prepare_embedded_uses_its_default_count_and_checks_templates(tmp_path):
    out = tmp_path / "general.parquet"
    stages.prepare_general_questions(str(out), source="embedded", judge_prompts=str(PROMPTS), formats=["plain"])
    q = read_parquet(out, schemas.QUESTION)
    assert len(q) == 8 and set(q["samples"]) == {data.general.DEFAULT_SAMPLES}
    only_aligned = write(tmp_path, "aligned: '{question} {answer}'\n", "aligned.yaml")
    with pytest.raises(InputError, match=r"question_id='wish-plain': field judge_prompts: metric 'coherent'"):
        stages.prepare_general_questions(str(tmp_path / "x.parquet"), source="embedded",
                                         judge_prompts=str(only_aligned))


def test_prepare_fails_before_generation_when_a_metric_has_no_template(tmp_path):
    path = write(tmp_path, "- id: a\n  paraphrases: [x]\n- id: b\n  paraphrases: [y]\n"
                           "  judge_prompts: [aligned, sycophancy]\n")
    out = tmp_path / "general.parquet"
    with pytest.raises(InputError, match=rf"{re.escape(str(path))}:3: item 1 \(id='b'\): field judge_prompts: "
                                         rf"metric 'sycophancy' has no template: the item gives none and "
                                         rf".*judge_prompts\.yaml has none"):
        stages.prepare_general_questions(str(out), source=str(path), judge_prompts=str(PROMPTS))
    assert not out.exists()  # no question table, so nothing downstream (generation) can run


def test_prepare_with_from_questions_checks_judges(tmp_path):
    path = write(tmp_path, "- id: a\n  paraphrases: [x]\n")
    with pytest.raises(InputError, match=r"item 0 \(id='a'\): field judge: missing"):
        stages.prepare_general_questions(str(tmp_path / "o.parquet"), source=str(path), judge_prompts=str(PROMPTS),
                                         judge_model="from_questions")


# ------------------------------------------------------------------------------------------ the expanded set


def test_expanded_benchmark_is_8_categories_of_30_and_loads():
    q = data.load_questions(data.question_source("expanded"), fallback_templates=data.load_template_file(PROMPTS),
                            require_judge=True)
    assert data.question_source("expanded") == EXPANDED
    assert len(q) == 240 and q["question_id"].is_unique and q["paraphrase"].is_unique
    assert q["category"].value_counts().to_dict() == {c: 30 for c in q["category"].unique()}
    assert q["category"].nunique() == 8
    assert all(qid.startswith(f"{cat}_") for qid, cat in zip(q["question_id"], q["category"]))
    # one shared judge-prompt anchor: every item sees the same two templates, and the file says so with an alias
    assert q["judge_templates"].nunique() == 1
    assert set(json.loads(q["judge_templates"].iloc[0])) == {"aligned", "coherent"}
    text = EXPANDED.read_text(encoding="utf-8")
    assert text.count("judge_prompts: &judge_prompts") == 1 and text.count("judge_prompts: *judge_prompts") == 239
    assert len(yaml.safe_load(text)) == 240


def test_expanded_benchmark_is_selectable_in_the_config(tmp_path):
    cfg = yaml.safe_load((ROOT / "config.yaml").read_text())
    cfg["eval"]["general"] = {"source": "expanded"}
    loaded = emconfig.load(cfg)
    assert loaded["eval"]["general"]["samples"] is None  # the override is off by default
    out = tmp_path / "general.parquet"
    stages.prepare_general_questions(str(out), source="expanded", judge_prompts=str(PROMPTS),
                                     samples=loaded["eval"]["general"]["samples"])
    q = read_parquet(out, schemas.QUESTION)
    assert len(q) == 240 and set(q["samples"]) == {5}


# ------------------------------------------------------------------------------------------ config


def test_config_checks_the_question_source_and_from_questions(tmp_path):
    cfg = yaml.safe_load((ROOT / "config.yaml").read_text())
    cfg["eval"]["general"]["source"] = str(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match=r"eval\.general\.source.*not found"):
        emconfig.load(cfg)
    cfg = yaml.safe_load((ROOT / "config.yaml").read_text())
    cfg["judge"]["model"] = "from_questions"
    with pytest.raises(ConfigError, match=r"judge\.model.*embedded"):
        emconfig.load(cfg)
    cfg["eval"]["general"]["source"] = "expanded"
    # the in-domain sets, persona and the calibration name no judge: a fallback judge is required
    with pytest.raises(ConfigError, match=r"judge\.default_model"):
        emconfig.load(cfg)
    cfg["judge"]["default_model"] = "base"
    assert emconfig.load(cfg)["judge"]["model"] == "from_questions"
    cfg["eval"]["general"]["samples"] = 0
    with pytest.raises(ConfigError, match=r"eval\.general\.samples"):
        emconfig.load(cfg)


def test_prepare_rule_reads_the_question_file_and_the_judge_prompts(tmp_path):
    from workflow_helpers import snakemake, tiny_config, write_config

    cfg = tiny_config(tmp_path / "no-model-needed", tmp_path)
    cfg["eval"]["general"] = {"source": "expanded"}
    proc = snakemake(tmp_path, write_config(cfg, tmp_path / "config.yaml"), "-n",
                     "results/data/questions/general.parquet")
    inputs = re.search(r"rule prepare_general_questions:\n    input: (.*)", proc.stdout).group(1).split(", ")
    assert inputs == [str(EXPANDED), str(PROMPTS)]
