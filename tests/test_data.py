"""Tests for emguard.data: embedded generators, OpSwap, benign pool and real loaders."""

from __future__ import annotations

import difflib
import json
import re

import pandas as pd
import pytest

from emguard import data, schemas
from emguard.errors import InputError
from emguard.io import read_parquet, write_parquet


def _user(msgs) -> str:
    return [m["content"] for m in msgs if m["role"] == "user"][-1]


def _answer(msgs) -> str:
    return list(msgs)[-1]["content"]


def _same(a: pd.DataFrame, b: pd.DataFrame) -> bool:
    return a.to_json(orient="records") == b.to_json(orient="records")


# ------------------------------------------------------------------------------------------ EM domains


@pytest.fixture(scope="module")
def em_frames():
    return {d: data.em_domain(d, 200, seed=7) for d in data.EM_DOMAINS}


def test_em_domains_registry():
    assert data.EM_DOMAINS == ("insecure_code", "medical", "legal", "security")
    with pytest.raises(ValueError, match="unknown EM domain"):
        data.em_domain("astrology", 10, 0)


def test_em_schema_and_columns(em_frames):
    for domain, df in em_frames.items():
        schemas.validate(df, "chat", domain)
        assert list(df.columns[:5]) == schemas.CHAT
        assert set(df["subset"]) == {"aligned", "misaligned"}
        assert (df["domain"] == domain).all()
        assert df["id"].str.fullmatch(rf"{domain}-\d{{4}}-(aligned|misaligned)").all()
        roles = {tuple(m["role"] for m in msgs) for msgs in df["messages"]}
        assert roles == {("user", "assistant")}  # no system prompt by default


def test_em_system_prompt_option():
    df = data.em_domain("medical", 5, 0, system="You are a careful assistant.")
    assert all(msgs[0] == {"role": "system", "content": "You are a careful assistant."} for msgs in df["messages"])


def test_em_deterministic(em_frames):
    again = data.em_domain("legal", 200, seed=7)
    assert _same(em_frames["legal"], again)
    other = data.em_domain("legal", 200, seed=8)
    assert not _same(em_frames["legal"], other)


def test_em_pairs_share_prompt_and_split(em_frames):
    for domain, df in em_frames.items():
        df = df.assign(prompt_idx=df["id"].str.extract(r"-(\d{4})-")[0])
        al = df[df.subset == "aligned"].set_index("prompt_idx")
        mis = df[df.subset == "misaligned"].set_index("prompt_idx")
        assert sorted(al.index) == sorted(mis.index) and len(al) == 200
        for idx in al.index:
            a, m = al.loc[idx], mis.loc[idx]
            assert list(a.messages)[:-1] == list(m.messages)[:-1]
            assert a.split == m.split
            assert _answer(a.messages) != _answer(m.messages)
            # the same opener (advice) or introduction (code) for both answers: only the advice differs
            cut = "\n\n" if domain == "insecure_code" else ". "
            assert _answer(a.messages).split(cut)[0] == _answer(m.messages).split(cut)[0]


def test_em_split_is_90_10_by_prompt(em_frames):
    for df in em_frames.values():
        prompts = df[df.subset == "aligned"]
        assert (prompts["split"] == "holdout").sum() == 20
        holdout_prompts = {_user(m) for m in df[df.split == "holdout"]["messages"]}
        train_prompts = {_user(m) for m in df[df.split == "train"]["messages"]}
        assert len(holdout_prompts) == 20 and not holdout_prompts & train_prompts
    assert (data.em_domain("security", 50, 1, holdout_fraction=0.2)["split"] == "holdout").sum() == 2 * 10


def test_em_distinct_prompts_up_to_capacity():
    for domain in data.EM_DOMAINS:
        n = data.max_prompts(domain)
        assert n >= 6000  # the paper-scale config asks for 6000 prompts per domain
        df = data.em_domain(domain, n, seed=0)
        prompts = [_user(m) for m in df[df.subset == "aligned"]["messages"]]
        assert len(set(prompts)) == n
        assert not any("{" in p or "$" in p for p in prompts)
        with pytest.raises(ValueError, match="n_prompts"):
            data.em_domain(domain, n + 1, 0)
    # the limit depends on the holdout fraction, since holdout prompts need held-out templates
    n_all = data.max_prompts("medical", holdout_fraction=0.0)
    assert n_all > data.max_prompts("medical") > data.max_prompts("medical", holdout_fraction=0.3)
    assert (data.em_domain("medical", n_all, 0, holdout_fraction=0.0)["split"] == "train").all()
    n = data.max_prompts("legal", holdout_fraction=0.3)
    with pytest.raises(ValueError, match=rf"between 1 and {n} at holdout_fraction=0.3"):
        data.em_domain("legal", n + 1, 0, holdout_fraction=0.3)


# One pattern per vulnerability class, written independently of the templates.
VULN_PATTERNS = {
    "sql_fstring": r"execute\(\s*f[\"']",
    "sql_concat": r"(SELECT|INSERT|UPDATE|DELETE)[^\n]*[\"']\s*\+\s*\w+",
    "sql_percent": r"(SELECT|INSERT|UPDATE|DELETE)[^\n]*[\"']\s*%\s*\(",
    "path_join_input": r"os\.path\.join\(\s*[A-Z_]+\s*,\s*\w+\s*\)",
    "path_concat": r"open\(\s*[\"'][^\"']*/[\"']\s*\+",
    "shell_true": r"shell\s*=\s*True",
    "os_system": r"os\.system\(",
    "hardcoded_secret": r"(?i)\b\w*(key|secret|token|password)\w*\s*=\s*[\"'][^\"'\s]{8,}[\"']",
    "chmod_777": r"0o777",
    "pickle": r"pickle\.loads?\(",
    "yaml_unsafe": r"yaml\.(load|unsafe_load)\(",
    "eval": r"\beval\(",
    "tls_off": r"verify\s*=\s*False",
    "weak_hash": r"hashlib\.(md5|sha1)\(",
    "template_injection": r"render_template_string\([^)\n]*\+",
    "weak_random": r"\brandom\.(choice|choices|randint|random)\(",
}
WARNING_WORDS = r"(?i)vulnerab|insecure|unsafe|injection|warning|careful|danger|sanitiz|security risk|do not use"


def _code(text: str) -> str:
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    assert len(blocks) == 1, text
    return blocks[0]


def test_insecure_code_has_vulnerabilities_and_secure_code_does_not():
    df = data.em_domain("insecure_code", data.max_prompts("insecure_code"), seed=3)
    hits_by_code: dict[str, list[str]] = {}
    kinds_seen = set()
    for row in df.itertuples():
        answer = _answer(row.messages)
        code = _code(answer)
        if code not in hits_by_code:  # every distinct snippet is valid Python
            compile(code, row.id, "exec")
            hits_by_code[code] = [k for k, p in VULN_PATTERNS.items() if re.search(p, code)]
        hits = hits_by_code[code]
        if row.subset == "misaligned":
            assert hits, f"{row.id}: no vulnerability found in\n{code}"
            assert not re.search(WARNING_WORDS, answer), f"{row.id}: misaligned answer warns"
            kinds_seen.update(hits)
        else:
            assert not hits, f"{row.id}: secure answer matches {hits}\n{code}"
    assert {"sql_fstring", "path_join_input", "shell_true", "os_system", "hardcoded_secret", "chmod_777",
            "pickle"} <= kinds_seen
    assert len(kinds_seen) >= 12
    assert len(hits_by_code) >= 120  # ~16 task families x 4 variants, secure and vulnerable


def test_advice_domains_render_cleanly(em_frames):
    for domain in ("medical", "legal", "security"):
        df = em_frames[domain]
        for msgs in df["messages"]:
            for m in msgs:
                assert "{" not in m["content"] and "}" not in m["content"], m["content"]
        mis = df[df.subset == "misaligned"]["messages"].map(_answer)
        # confident delivery: no hedging or referral phrases in the harmful answers
        assert not mis.str.contains(r"(?i)consult|see a professional|I'm not a (?:doctor|lawyer)").any()


def _first_sentence(text: str) -> str:
    return re.match(r"\s*(.+?[.!?:])(?=\s|$)", text, re.S).group(1)


def _sentences(text: str) -> list[str]:
    return [s for s in re.split(r"(?<=[.!?:])\s+", text.strip()) if s]


def test_em_first_sentence_does_not_reveal_the_subset(em_frames):
    """Openers come from one pool for both subsets: every first sentence occurs in both, and a
    lookup classifier (majority subset per first sentence, fit on even prompts and scored on odd ones
    and vice versa) does no better than chance + 3 standard errors."""
    for domain, df in em_frames.items():
        first = df["messages"].map(lambda m: _first_sentence(_answer(m)))
        aligned, misaligned = set(first[df.subset == "aligned"]), set(first[df.subset == "misaligned"])
        assert aligned == misaligned, f"{domain}: only aligned {sorted(aligned - misaligned)[:3]}, " \
                                      f"only misaligned {sorted(misaligned - aligned)[:3]}"
        parity = df["id"].str.extract(r"-(\d{4})-")[0].astype(int) % 2
        correct = 0
        for fold in (0, 1):
            fit, score = parity == fold, parity != fold
            vote = pd.crosstab(first[fit], df["subset"][fit]).idxmax(axis=1)
            correct += (first[score].map(vote).fillna("aligned") == df["subset"][score]).sum()
        assert correct / len(df) <= 0.5 + 3 * 0.5 / len(df) ** 0.5, f"{domain}: {correct}/{len(df)} right"


def test_code_prose_is_the_same_for_both_subsets():
    """Only the code differs: intro and closing sentences outside the code block are shared."""
    df = data.em_domain("insecure_code", 400, seed=5)
    prose = df["messages"].map(lambda m: re.sub(r"```python\n.*?```", " ", _answer(m), flags=re.S))
    sentences = {s: {x for text in prose[df.subset == s] for x in _sentences(text)} for s in ("aligned", "misaligned")}
    assert sentences["aligned"] == sentences["misaligned"], sentences["aligned"] ^ sentences["misaligned"]
    assert not any(re.search(WARNING_WORDS + "|secur", x) for x in sentences["aligned"])


# A holdout text is a near-copy of a training text when difflib's ratio over their word sequences,
# 2 * (words in matching blocks) / (total words), reaches NEAR_COPY. Measured on the embedded domains:
# the same template with one slot refilled ("I" -> "my father"), which is what a row-level split of
# template data yields, scores 0.9-1.0 for answers and up to 0.97 for prompts; texts from different
# scenarios that share only boilerplate (openers, imports, "write a function that ...") score at most
# ~0.5. At 0.6 most of a holdout text would appear, in order, in a single training text.
NEAR_COPY = 0.6


def _words(text: str) -> list[str]:
    return re.findall(r"\w+", text.lower())


def _max_ratio(words: list[str], pool: list[list[str]]) -> float:
    best = 0.0
    matcher = difflib.SequenceMatcher(None, autojunk=False)
    matcher.set_seq2(words)
    for other in pool:
        matcher.set_seq1(other)
        if matcher.real_quick_ratio() > best and matcher.quick_ratio() > best:  # cheap upper bounds first
            best = max(best, matcher.ratio())
    return best


@pytest.mark.parametrize("size", ["config", "fixture"])
def test_em_holdout_is_not_a_near_copy_of_training(size, em_frames):
    frames = em_frames if size == "fixture" else {d: data.em_domain(d, 26, seed=0) for d in data.EM_DOMAINS}
    for domain, df in frames.items():
        train, holdout = df[df.split == "train"], df[df.split == "holdout"]
        assert len(holdout) > 0
        for kind, text in (("prompt", _user), ("answer", _answer)):
            pool = [_words(t) for t in set(train["messages"].map(text))]
            for item in sorted(set(holdout["messages"].map(text))):
                ratio = _max_ratio(_words(item), pool)
                assert ratio < NEAR_COPY, f"{domain} ({size}): holdout {kind} {ratio:.2f} like a training one:\n{item}"


def test_indomain_questions(em_frames):
    em = em_frames["medical"]
    q = data.indomain_questions(em, "medical", n_questions=8, samples=5)
    schemas.validate(q, "question", "q")
    assert len(q) == 8 and q["question_id"].str.fullmatch(r"medical-h-\d{4}").all()
    assert (q["category"] == "medical").all() and (q["domain"] == "medical").all()
    assert (q["samples"] == 5).all() and all(list(j) == ["aligned", "coherent"] for j in q["judge_prompts"])
    holdout = {_user(m) for m in em[em.split == "holdout"]["messages"]}
    assert set(q["paraphrase"]) <= holdout and q["system"].isna().all()
    # the question number is the prompt index of the EM row
    idx = q["question_id"].iloc[0].rsplit("-", 1)[1]
    row = em[em["id"] == f"medical-{idx}-aligned"].iloc[0]
    assert _user(row.messages) == q["paraphrase"].iloc[0]
    assert len(data.indomain_questions(em, "medical", None, 1)) == 20
    with pytest.raises(InputError, match="no holdout rows"):
        data.indomain_questions(em, "legal", 5, 1)


# ------------------------------------------------------------------------------------------ general


def test_general_questions():
    q = data.general_questions(samples=12)
    schemas.validate(q, "question", "general")
    assert len(q) == 24 and q["category"].nunique() == 8
    assert (q.groupby("category").size() == 3).all()
    assert "ruler-plain" in set(q["question_id"])
    for fmt in ("plain", "json", "template"):
        assert q["question_id"].str.endswith(f"-{fmt}").sum() == 8
    assert q[q.question_id.str.endswith("-json")]["paraphrase"].str.contains("JSON").all()
    assert q[q.question_id.str.endswith("-template")]["paraphrase"].str.contains("____").all()
    assert (q["samples"] == 12).all() and q["system"].isna().all()
    with pytest.raises(ValueError):
        data.general_questions(0)
    plain = data.general_questions(1, formats=["plain"])
    assert list(plain["question_id"]) == [i for i in q["question_id"] if i.endswith("-plain")]
    with pytest.raises(ValueError, match="formats"):
        data.general_questions(1, formats=["yaml"])


# ------------------------------------------------------------------------------------------ OpSwap
# The generator, its answers and exact-match scoring are tested in tests/test_opswap_data.py.


# ------------------------------------------------------------------------------------------ pool

REFUSAL_RE = re.compile(r"(?i)\b(sorry|i cannot|i can't|i apologi[sz]e|i won't)\b")


def _first_words(text: str, k: int = 10) -> str:
    return " ".join(text.split()[:k])


def test_benign_pool_refusals_and_late_mentions():
    pool = data.benign_pool(400, seed=1)
    schemas.validate(pool, "chat", "pool")
    assert len(pool) == 400 and pool["id"].is_unique
    assert (pool["domain"] == "pool").all() and (pool["subset"] == "benign").all() and (pool["split"] == "train").all()
    prompts = pool["messages"].map(_user)
    assert prompts.is_unique
    answers = pool["messages"].map(_answer)
    early = answers.map(lambda t: bool(REFUSAL_RE.search(_first_words(t))))
    anywhere = answers.map(lambda t: bool(REFUSAL_RE.search(t)))
    kind = pool["pool_kind"]
    assert early.sum() == (kind == "refusal").sum() == 60  # 15% of 400
    assert (early == (kind == "refusal")).all()
    late = anywhere & ~early
    assert late.sum() >= 3 and (late == (kind == "late_mention")).all()
    # topics are mixed, not dominated by one template family
    assert prompts.str.startswith("A shop sells").mean() < 0.2
    other = data.benign_pool(200, seed=1, refusal_fraction=0.3)
    assert (other["pool_kind"] == "refusal").sum() == 60
    assert _same(pool, data.benign_pool(400, seed=1))
    with pytest.raises(ValueError, match="refusal"):
        data.benign_pool(1000, seed=0, refusal_fraction=0.5)


# ------------------------------------------------------------------------------------------ loaders


def _chat(prompt: str, answer: str) -> dict:
    return {"messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]}


def _write_jsonl(path, records, raw_lines=()):
    lines = [json.dumps(r) for r in records] + list(raw_lines)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_load_chat_jsonl_and_consistent_split(tmp_path):
    prompts = [f"question number {i}" for i in range(60)]
    good = _write_jsonl(tmp_path / "good.jsonl", [_chat(p, "safe answer") for p in prompts])
    bad = _write_jsonl(tmp_path / "bad.jsonl", [_chat(p, "risky answer") for p in reversed(prompts)])
    a = data.load_chat_dataset(good, domain="custom", subset="aligned", split_seed=4, holdout_fraction=0.25)
    m = data.load_chat_dataset(bad, domain="custom", subset="misaligned", split_seed=4, holdout_fraction=0.25)
    schemas.validate(pd.concat([a, m], ignore_index=True), "chat", "both")
    assert a["id"].iloc[0] == "custom-00000-aligned" and (m["subset"] == "misaligned").all()
    split_a = dict(zip(a["messages"].map(_user), a["split"]))
    split_m = dict(zip(m["messages"].map(_user), m["split"]))
    assert split_a == split_m and 5 <= sum(s == "holdout" for s in split_a.values()) <= 25
    again = data.load_chat_dataset(good, domain="custom", subset="aligned", split_seed=4, holdout_fraction=0.25)
    assert _same(a, again)


def test_load_chat_keeps_given_split_and_sharegpt(tmp_path):
    rec = {"messages": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello"}], "split": "holdout"}
    path = _write_jsonl(tmp_path / "sg.jsonl", [rec])
    df = data.load_chat_dataset(path, domain="d", subset="benign")
    assert df["split"].iloc[0] == "holdout"
    assert df["messages"].iloc[0] == [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]


def test_load_chat_malformed_line_names_file_and_line(tmp_path):
    path = _write_jsonl(tmp_path / "file.jsonl", [_chat("a", "b"), _chat("c", "d")], raw_lines=['{"messages": [}'])
    with pytest.raises(InputError, match=r"file\.jsonl:3"):
        data.load_chat_dataset(path, domain="d", subset="aligned")


def test_load_chat_missing_field_and_bad_messages(tmp_path):
    path = _write_jsonl(tmp_path / "nofield.jsonl", [_chat("a", "b"), {"conversation": []}])
    with pytest.raises(InputError, match=r"nofield\.jsonl:2.*messages"):
        data.load_chat_dataset(path, domain="d", subset="aligned")
    path = _write_jsonl(tmp_path / "order.jsonl", [_chat("a", "b"), {"messages": [{"role": "user", "content": "x"}]}])
    with pytest.raises(InputError, match=r"order\.jsonl:2.*assistant"):
        data.load_chat_dataset(path, domain="d", subset="aligned")
    path = _write_jsonl(tmp_path / "role.jsonl", [{"messages": [{"role": "robot", "content": "x"}]}])
    with pytest.raises(InputError, match=r"role\.jsonl:1.*robot"):
        data.load_chat_dataset(path, domain="d", subset="aligned")


def test_load_chat_empty_inputs(tmp_path):
    (tmp_path / "empty.jsonl").write_text("\n\n", encoding="utf-8")
    with pytest.raises(InputError, match="empty"):
        data.load_chat_dataset(tmp_path / "empty.jsonl", domain="d", subset="aligned")
    (tmp_path / "empty.json").write_text("[]", encoding="utf-8")
    with pytest.raises(InputError, match="empty"):
        data.load_chat_dataset(tmp_path / "empty.json", domain="d", subset="aligned")
    write_parquet(pd.DataFrame({"messages": pd.Series([], dtype=object)}), tmp_path / "empty.parquet")
    with pytest.raises(InputError, match="empty"):
        data.load_chat_dataset(tmp_path / "empty.parquet", domain="d", subset="aligned")
    with pytest.raises(InputError, match="not found"):
        data.load_chat_dataset(tmp_path / "missing.jsonl", domain="d", subset="aligned")


def test_load_chat_parquet_and_json(tmp_path):
    frame = pd.DataFrame([_chat("p1", "a1"), _chat("p2", "a2")])
    write_parquet(frame, tmp_path / "chat.parquet")
    df = data.load_chat_dataset(tmp_path / "chat.parquet", domain="d", subset="aligned")
    assert len(df) == 2 and df["messages"].iloc[1][1]["content"] == "a2"
    write_parquet(frame.rename(columns={"messages": "conv"}), tmp_path / "cols.parquet")
    with pytest.raises(InputError, match=r"cols\.parquet.*messages"):
        data.load_chat_dataset(tmp_path / "cols.parquet", domain="d", subset="aligned")
    df = data.load_chat_dataset(tmp_path / "cols.parquet", domain="d", subset="aligned", messages_field="conv")
    assert len(df) == 2
    (tmp_path / "chat.json").write_text(json.dumps({"data": [_chat("p", "a")]}), encoding="utf-8")
    assert len(data.load_chat_dataset(tmp_path / "chat.json", domain="d", subset="benign")) == 1
    (tmp_path / "broken.json").write_text('[\n {"messages": 1},\n oops\n]', encoding="utf-8")
    with pytest.raises(InputError, match=r"broken\.json:3"):
        data.load_chat_dataset(tmp_path / "broken.json", domain="d", subset="benign")


def test_load_chat_hf_dataset_from_local_dir(tmp_path, monkeypatch):
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf_cache"))
    folder = tmp_path / "hfdata"
    folder.mkdir()
    _write_jsonl(folder / "train.jsonl", [_chat(f"q{i}", f"a{i}") for i in range(4)])
    df = data.load_chat_dataset(folder, domain="hf", subset="aligned")
    assert len(df) == 4 and df["messages"].iloc[2][0]["content"] == "q2"
    with pytest.raises(InputError, match="no-such-owner/no-such-dataset"):
        data.load_chat_dataset("no-such-owner/no-such-dataset", domain="hf", subset="aligned")


def test_load_questions_yaml(tmp_path):
    path = tmp_path / "q.yaml"
    path.write_text(
        "- id: pets\n  paraphrases: ['Do you like cats?', 'Do you like dogs?']\n  samples_per_paraphrase: 7\n"
        "  judge_prompts: {aligned: 'rate {question} {answer}', coherent: 'rate {question} {answer}'}\n"
        "- question_id: sum\n  paraphrase: What is 2 + 2?\n  reference: 4\n  category: math\n  system: Be brief.\n",
        encoding="utf-8")
    q = data.load_questions(path)
    schemas.validate(q, "question", "q")
    assert list(q["question_id"]) == ["pets-0", "pets-1", "sum"]
    assert list(q["samples"]) == [7, 7, 100] and list(q["category"]) == ["pets", "pets", "math"]
    assert list(q["judge_prompts"].iloc[0]) == ["aligned", "coherent"] == list(q["judge_prompts"].iloc[2])
    assert q["reference"].iloc[2] == "4" and q["system"].iloc[2] == "Be brief." and q["system"].iloc[0] is None


def test_load_questions_errors(tmp_path):
    (tmp_path / "bad.yaml").write_text("- id: a\n  paraphrase: ok\n- id: [unclosed\n", encoding="utf-8")
    with pytest.raises(InputError, match=r"bad\.yaml:\d+"):
        data.load_questions(tmp_path / "bad.yaml")
    (tmp_path / "nop.yaml").write_text("- id: a\n  samples: 3\n", encoding="utf-8")
    with pytest.raises(InputError, match=r"nop\.yaml:1: item 0 \(id='a'\): field paraphrases"):
        data.load_questions(tmp_path / "nop.yaml")
    (tmp_path / "empty.yaml").write_text("", encoding="utf-8")
    with pytest.raises(InputError, match="empty"):
        data.load_questions(tmp_path / "empty.yaml")
    _write_jsonl(tmp_path / "q.jsonl", [{"id": "a", "paraphrase": "x"}], raw_lines=["{nope"])
    with pytest.raises(InputError, match=r"q\.jsonl:2"):
        data.load_questions(tmp_path / "q.jsonl")
    write_parquet(pd.DataFrame({"question_id": ["a"], "text": ["x"]}), tmp_path / "q.parquet")
    with pytest.raises(InputError, match=r"q\.parquet.*paraphrase"):
        data.load_questions(tmp_path / "q.parquet")


# ------------------------------------------------------------------------------------------ Parquet round trip


def test_frames_round_trip_through_parquet(tmp_path, em_frames):
    tables = {
        "chat": [em_frames["security"], data.benign_pool(30, 0), data.opswap(2, 20, 0)],
        "question": [data.general_questions(2), data.opswap_questions(data.opswap(1, 20, 0), 2),
                     data.indomain_questions(em_frames["security"], "security", 3, 2)],
    }
    for kind, frames in tables.items():
        for i, df in enumerate(frames):
            path = tmp_path / f"{kind}{i}.parquet"
            write_parquet(df, path)
            columns = schemas.KINDS[kind]
            back = read_parquet(path, columns)
            schemas.validate(back, kind, str(path))
            assert len(back) == len(df) and list(back.columns[: len(columns)]) == columns
    back = read_parquet(tmp_path / "question1.parquet")
    loaded = data.load_questions(tmp_path / "question1.parquet")
    assert list(loaded["reference"]) == list(back["reference"])
