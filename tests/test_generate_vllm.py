"""The vLLM generation backend (emguard.generate_vllm) without vLLM: request building (LoRA ids and paths per
run, seeds, sampling settings and per-question overrides), the rs-LoRA rescaling checked against PEFT, the
per-run cache, splitting one engine's outputs into per-run tables, and the stage end to end with a fake engine
that has vLLM's ``generate`` signature. The last test generates with real vLLM and is skipped where it is not
installed."""

from __future__ import annotations

import json
import math
import sys
import types
from pathlib import Path

import pandas as pd
import pytest
import torch

from emguard import generate_vllm as gv
from emguard.errors import ConfigError, InputError
from emguard.generate import SamplingSettings
from emguard.schemas import GENERATION


# ------------------------------------------------------------------------------------------ fakes


class FakeOutput:
    def __init__(self, text, token_ids=()):
        self.outputs = [types.SimpleNamespace(text=text, token_ids=list(token_ids))]


class FakeEngine:
    """``generate(prompts, sampling_params, *, use_tqdm, lora_request)`` like ``vllm.LLM``; the answer names the
    adapter, the seed and the length limit it was asked with, so the tests can see what reached the engine. With
    a tokenizer the completion also has token ids: the text's, then a stop id and more tokens after it (a
    reader that does not cut at the stop id shows them)."""

    def __init__(self, tokenizer=None):
        self.calls, self.tokenizer = [], tokenizer

    def generate(self, prompts, sampling_params=None, *, use_tqdm=True, lora_request=None):
        self.calls.append((prompts, sampling_params, lora_request))
        out = []
        for prompt, params, lora in zip(prompts, sampling_params, lora_request):
            name = "base" if lora is None else lora["name"]
            text = f" {name}|{params['seed']}|{params['max_tokens']}|{params['temperature']} "
            ids = []
            if self.tokenizer is not None:
                after = self.tokenizer("AFTER THE STOP", add_special_tokens=False)["input_ids"]
                ids = self.tokenizer(text, add_special_tokens=False)["input_ids"] + [params["stop_token_ids"][-1]] + after
            out.append(FakeOutput(text, ids))
        return out


def fake_params(**kwargs):
    return dict(kwargs)


def fake_lora(name, int_id, path):
    return {"name": name, "id": int_id, "path": path}


def encode(conv):
    return [len(m["content"]) for m in conv]  # distinct prompts -> distinct ids; enough for request building


def questions(rows, evalset="general"):
    base = {"system": None, "samples": 2}
    return pd.DataFrame([{**base, **r} for r in rows]).assign(evalset=evalset)


QS = questions([{"question_id": "q1", "paraphrase": "Hello?"},
                {"question_id": "q2", "paraphrase": "What now, friend?", "samples": 1}])
SETTINGS = SamplingSettings(max_new_tokens=7, temperature=1.0, top_p=0.9)


def three_runs(qs=QS):
    return [gv.RunSpec("m/base/untrained/default/seed0", qs), gv.RunSpec("m/a/misaligned/default/seed0", qs, "/x/a"),
            gv.RunSpec("m/b/kl/0.1/seed0", qs, "/x/b")]


def run_fake(runs, settings=SETTINGS, seed=3, engine=None):
    engine = engine or FakeEngine()
    paths = {r.run_id: f"{r.adapter}-served" for r in runs if r.adapter}
    tables = gv.generate_runs(engine, runs, encode=encode, stops=[2, 5], settings=settings, seed=seed,
                              lora_paths=paths, sampling_params=fake_params, lora_request=fake_lora)
    return engine, tables


# ------------------------------------------------------------------------------------------ requests


def test_one_engine_call_serves_every_run_with_its_own_lora_request():
    runs = three_runs()
    engine, tables = run_fake(runs)
    assert len(engine.calls) == 1
    prompts, params, loras = engine.calls[0]
    assert len(prompts) == 3 * 3  # 3 runs x (2 + 1 samples)
    assert loras[:3] == [None] * 3  # the untrained run: the base model
    assert {json.dumps(lora, sort_keys=True) for lora in loras[3:]} == {
        json.dumps({"name": "m/a/misaligned/default/seed0", "id": 1, "path": "/x/a-served"}, sort_keys=True),
        json.dumps({"name": "m/b/kl/0.1/seed0", "id": 2, "path": "/x/b-served"}, sort_keys=True)}
    assert all(p["stop_token_ids"] == [2, 5] and p["top_p"] == 0.9 and p["max_tokens"] == 7 for p in params)
    assert prompts[0] == {"prompt_token_ids": [6]}  # the conversation's ids as the encoder gave them
    # the answers come back to their own run, in question then sample order
    for run in runs:
        df = tables[run.run_id]
        assert list(df.columns) == GENERATION + ["evalset"]
        assert list(zip(df.question_id, df.sample_idx)) == [("q1", 0), ("q1", 1), ("q2", 0)]
        assert set(df.run_id) == {run.run_id} and set(df.seed) == {3} and set(df.checkpoint) == {"final"}
        name = "base" if run.adapter is None else run.run_id
        assert all(a.startswith(name + "|") for a in df.answer)  # stripped, from this run's adapter
        assert df.prompt_messages.iloc[2] == [{"role": "user", "content": "What now, friend?"}]


def test_seeds_are_per_question_and_sample_and_shared_across_runs():
    engine, tables = run_fake(three_runs())
    seeds = [[int(a.split("|")[1]) for a in df.answer] for df in tables.values()]
    assert seeds[0] == seeds[1] == seeds[2]  # common random numbers across runs
    assert len(set(seeds[0])) == 3  # but every (question, sample) its own stream
    assert seeds[0][0] == gv.request_seed(3, "general", "q1", 0)
    assert gv.request_seed(3, "general", "q1", 0) != gv.request_seed(4, "general", "q1", 0)
    assert gv.request_seed(3, "general", "q1", 0) != gv.request_seed(3, "indomain", "q1", 0)
    assert 0 <= gv.request_seed(10**12, None, "x", 99) < 2**31
    _, again = run_fake(three_runs())
    for run_id in tables:  # reproducible
        pd.testing.assert_frame_equal(tables[run_id], again[run_id])


def test_question_sampling_values_override_the_config_per_question():
    qs = questions([{"question_id": "hot", "paraphrase": "a", "temperature": 0.5, "max_new_tokens": None},
                    {"question_id": "long", "paraphrase": "bb", "temperature": None, "max_new_tokens": 40.0}])
    _, tables = run_fake([gv.RunSpec("r", qs)])
    answers = tables["r"].set_index(["question_id", "sample_idx"]).answer
    assert answers[("hot", 0)].split("|")[2:] == ["7", "0.5"]
    assert answers[("long", 1)].split("|")[2:] == ["40", "1.0"]


def test_identical_greedy_requests_are_generated_once():
    qs = questions([{"question_id": "q", "paraphrase": "same", "samples": 4}])
    greedy = SamplingSettings(max_new_tokens=5, temperature=0.0)
    engine, tables = run_fake([gv.RunSpec("base", qs), gv.RunSpec("ad", qs, "/x/a")], settings=greedy)
    prompts, _, loras = engine.calls[0]
    assert len(prompts) == 2 and loras[0] is None  # one request per run, not four
    assert len(tables["base"]) == len(tables["ad"]) == 4
    assert tables["base"].answer.nunique() == 1 and tables["base"].answer.iloc[0] != tables["ad"].answer.iloc[0]


def test_a_run_without_questions_gets_an_empty_table_and_bad_tables_fail():
    empty = questions([{"question_id": "q", "paraphrase": "x", "samples": 0}])
    engine, tables = run_fake([gv.RunSpec("r", empty)])
    assert engine.calls == [] and len(tables["r"]) == 0 and list(tables["r"].columns) == GENERATION + ["evalset"]
    with pytest.raises(InputError, match="run r: missing column 'paraphrase'"):
        run_fake([gv.RunSpec("r", QS.drop(columns="paraphrase"))])
    with pytest.raises(InputError, match="given twice"):
        gv.unique_run_ids([gv.RunSpec("r", QS), gv.RunSpec("r", QS)])


def test_output_text_decodes_token_ids_up_to_the_first_stop_like_the_hf_backend():
    out = FakeOutput(" vllm's own text ", token_ids=[5, 6, 2, 7, 2])
    decode = lambda ids: " " + "-".join(map(str, ids)) + " "  # noqa: E731
    assert gv.output_text(out, decode, stops=[2, 9]) == "5-6"
    assert gv.output_text(out, decode, stops=[]) == "5-6-2-7-2"
    assert gv.output_text(out) == "vllm's own text"  # without a decoder: vLLM's text
    with pytest.raises(ValueError, match="without completions"):
        gv.output_text(types.SimpleNamespace(outputs=[]))


def test_lora_rank_slot_rounds_up_to_a_rank_vllm_accepts():
    assert gv.lora_rank_slot(4) == 8 and gv.lora_rank_slot(32) == 32 and gv.lora_rank_slot(33) == 64
    assert gv.lora_rank_slot(4, 16) == 16
    with pytest.raises(ConfigError, match="generation.vllm.max_lora_rank"):
        gv.lora_rank_slot(32, 16)
    with pytest.raises(ConfigError, match="training.lora.r"):
        gv.lora_rank_slot(600)
    assert gv.max_loras_for(3) == 3 and gv.max_loras_for(40) == gv.DEFAULT_MAX_LORAS and gv.max_loras_for(0) == 1
    assert gv.max_loras_for(40, 2) == 2


def test_missing_vllm_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", None)  # import vllm -> ImportError, installed or not
    with pytest.raises(ConfigError, match=r"generation.backend.*emguard\[vllm\]"):
        gv.require_vllm()


# ------------------------------------------------------------------------------------------ rs-LoRA


def test_rslora_rescaling_math_gives_the_rslora_update_under_plain_scaling():
    gen = torch.Generator().manual_seed(0)
    r, alpha = 8, 16.0
    a, b = torch.randn(r, 12, generator=gen), torch.randn(10, r, generator=gen)
    config = {"r": r, "lora_alpha": alpha, "use_rslora": True}
    assert gv.rslora_factor(config) == pytest.approx(math.sqrt(r))
    assert gv.rslora_factor({**config, "use_rslora": False}) == 1.0
    scaled = gv.rescale_lora_b({"x.lora_A.weight": a, "x.lora_B.weight": b, "x.lora_embedding_B": b.clone()},
                               gv.rslora_factor(config))
    assert torch.equal(scaled["x.lora_A.weight"], a)  # A untouched
    rslora_update = alpha / math.sqrt(r) * b @ a
    plain_update = alpha / r * scaled["x.lora_B.weight"] @ a  # what vLLM computes from the copy
    torch.testing.assert_close(plain_update, rslora_update, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(scaled["x.lora_embedding_B"], b * math.sqrt(r))
    half = gv.rescale_lora_b({"x.lora_B.weight": b.to(torch.bfloat16)}, 2.0)["x.lora_B.weight"]
    assert half.dtype == torch.bfloat16  # stored in the adapter's own dtype


def _save_adapter(model_dir: Path, out: Path, use_rslora: bool) -> Path:
    from peft import get_peft_model

    from emguard.models import LoraSettings, load_model

    model = load_model(model_dir, device="cpu")
    peft_model = get_peft_model(model, LoraSettings(r=4, alpha=8, target_modules=["q_proj", "v_proj"],
                                                    use_rslora=use_rslora).to_peft())
    gen = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:  # PEFT starts B at zero: give the update a size
                p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
    peft_model.save_pretrained(out)
    return out


def _logits(model_dir, adapter, ids):
    from emguard.models import load_model

    model = load_model(model_dir, device="cpu", adapter=str(adapter))
    with torch.no_grad():
        return model(input_ids=ids).logits


def test_rslora_copy_matches_the_trained_adapter_under_peft(tiny_model_dir, tmp_path):
    """PEFT as the reference: the copy, read with plain alpha / r scaling (as vLLM reads it), gives the same
    logits as the rs-LoRA adapter read with alpha / sqrt(r)."""
    adapter = _save_adapter(tiny_model_dir, tmp_path / "rs", use_rslora=True)
    served = Path(gv.vllm_adapter(adapter, tmp_path / "served", max_rank=8))
    assert served != adapter
    cfg = json.loads((served / "adapter_config.json").read_text())
    assert cfg["use_rslora"] is False and cfg["r"] == 4 and cfg["lora_alpha"] == 8
    ids = torch.tensor([[1, 5, 9, 14, 3]])
    torch.testing.assert_close(_logits(tiny_model_dir, served, ids), _logits(tiny_model_dir, adapter, ids),
                               rtol=1e-5, atol=1e-5)
    # the copy really differs from the original weights (not a no-op)
    from emguard.models import load_model

    base = load_model(tiny_model_dir, device="cpu")
    with torch.no_grad():
        assert not torch.allclose(base(input_ids=ids).logits, _logits(tiny_model_dir, served, ids), atol=1e-4)
    plain = _save_adapter(tiny_model_dir, tmp_path / "plain", use_rslora=False)
    assert gv.vllm_adapter(plain, tmp_path / "unused", max_rank=8) == str(plain)  # served as it is
    assert not (tmp_path / "unused").exists()


@pytest.mark.parametrize("change, message", [
    ({"use_dora": True}, "use_dora"), ({"rank_pattern": {"q_proj": 8}}, "rank_pattern"),
    ({"alpha_pattern": {"q_proj": 3}}, "alpha_pattern"), ({"r": 16}, "r: 16 is above"),
    ({"peft_type": "IA3"}, "peft_type"), ({"lora_alpha": None}, "lora_alpha")])
def test_adapters_vllm_cannot_serve_exactly_are_refused_naming_file_and_key(tmp_path, change, message):
    folder = tmp_path / "ad"
    folder.mkdir()
    (folder / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 4, "lora_alpha": 8,
                                                            "use_rslora": True, **change}))
    with pytest.raises(InputError, match=rf"ad/adapter_config.json: key .*{message}"):
        gv.vllm_adapter(folder, tmp_path / "out", max_rank=8)
    (folder / "adapter_config.json").write_text("{\n  oops")
    with pytest.raises(InputError, match="adapter_config.json: line 2: not valid JSON"):
        gv.vllm_adapter(folder, tmp_path / "out", max_rank=8)


# ------------------------------------------------------------------------------------------ cache


def _key(run, adapter="a1", settings=SETTINGS, seed=0, engine=None):
    return gv.run_cache_key(run=run, model={"model": "m"}, adapter=adapter, settings=settings, seed=seed,
                            engine=engine or {"version": "0.33.0"})


def test_cache_key_changes_with_everything_that_changes_an_answer():
    run = gv.RunSpec("r", QS, "/x")
    key = _key(run)
    assert key == _key(gv.RunSpec("r", QS.copy(), "/elsewhere"))  # the adapter's content counts, not its path
    changed = [_key(run, adapter="a2"), _key(run, seed=1), _key(run, settings=SamplingSettings(max_new_tokens=8)),
               _key(run, engine={"version": "0.34.0"}), _key(gv.RunSpec("r2", QS, "/x")),
               _key(gv.RunSpec("r", QS.assign(paraphrase="other"), "/x")),
               _key(gv.RunSpec("r", QS.assign(temperature=0.0), "/x")),
               _key(gv.RunSpec("r", QS.assign(samples=3), "/x"))]
    assert len({key, *changed}) == len(changed) + 1


def test_cache_key_changes_with_the_generation_code(monkeypatch):
    """An edit to the code that writes answers misses the cache instead of serving the old code's tables."""
    run = gv.RunSpec("r", QS, "/x")
    key = _key(run)
    monkeypatch.setattr(gv, "code_identity", lambda: "edited")
    assert _key(run) != key


def test_adapter_digest_follows_content(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    for folder, weight in ((a, b"123"), (b, b"123")):
        folder.mkdir()
        (folder / "adapter_model.safetensors").write_bytes(weight)
        (folder / "adapter_config.json").write_text("{}")
    assert gv.adapter_digest(a) == gv.adapter_digest(b) and gv.adapter_digest(None) is None
    (b / "adapter_model.safetensors").write_bytes(b"124")
    assert gv.adapter_digest(a) != gv.adapter_digest(b)


def test_cached_generate_generates_only_the_missing_runs(tmp_path):
    runs = three_runs()
    keys = {r.run_id: _key(r, adapter=r.run_id) for r in runs}
    cache = gv.GenerationCache(tmp_path / "cache")
    asked = []

    def generate(missing):
        asked.append([r.run_id for r in missing])
        return run_fake(missing)[1]

    first = gv.cached_generate(runs, cache, keys, generate)
    assert asked == [[r.run_id for r in runs]] and len(list((tmp_path / "cache").glob("*.parquet"))) == 3
    keys[runs[1].run_id] = "retrained"
    second = gv.cached_generate(runs, cache, keys, generate)
    assert asked[1:] == [[runs[1].run_id]]  # one run changed: one run generated
    for run in runs:
        pd.testing.assert_frame_equal(first[run.run_id], second[run.run_id], check_dtype=False)
    gv.cached_generate(runs, cache, keys, generate)
    assert len(asked) == 2  # everything cached: no engine at all
    nothing = gv.GenerationCache(None)
    gv.cached_generate(runs[:1], nothing, keys, generate)
    assert asked[-1] == [runs[0].run_id] and nothing.get(keys[runs[0].run_id]) is None


def test_a_job_killed_mid_way_resumes_from_the_chunks_it_finished(tmp_path):
    runs = three_runs()
    keys = {r.run_id: _key(r, adapter=r.run_id) for r in runs}
    cache = gv.GenerationCache(tmp_path / "cache")
    asked = []

    def dies_on_the_second_chunk(part):
        asked.append([r.run_id for r in part])
        if len(asked) == 2:
            raise RuntimeError("time limit")
        return run_fake(part)[1]

    with pytest.raises(RuntimeError):
        gv.cached_generate(runs, cache, keys, dies_on_the_second_chunk, chunk=2)
    assert asked == [[runs[0].run_id, runs[1].run_id], [runs[2].run_id]]
    gv.cached_generate(runs, cache, keys, dies_on_the_second_chunk, chunk=2)  # the retry: one chunk left
    assert asked[2:] == [[runs[2].run_id]]


# ------------------------------------------------------------------------------------------ the stage


@pytest.fixture
def fake_vllm(monkeypatch):
    """The stage with vLLM replaced: version, engine and classes; records every engine built."""
    engines = []

    def load_engine(model_path, settings, **kwargs):
        from emguard.models import load_tokenizer

        engine = FakeEngine(load_tokenizer(model_path))
        engine.kwargs = kwargs
        engines.append(engine)
        return engine

    monkeypatch.setattr(gv, "require_vllm", lambda: types.SimpleNamespace(__version__="0.33.0"))
    monkeypatch.setattr(gv, "load_engine", load_engine)
    monkeypatch.setattr(gv, "vllm_classes", lambda: (fake_params, fake_lora))
    return engines


def _question_file(path: Path, rows) -> str:
    from emguard.data._util import question_frame
    from emguard.io import write_parquet

    extra = [c for c in ("temperature", "top_p", "max_new_tokens") if any(c in r for r in rows)]
    write_parquet(question_frame(rows, str(path), extra=extra), path)
    return str(path)


def test_stage_writes_every_runs_table_and_reuses_the_cache(fake_vllm, tiny_model_dir, tmp_path):
    from emguard.stages import generate_model_vllm

    general = _question_file(tmp_path / "general.parquet", [
        {"question_id": "g1", "paraphrase": "Hi there", "system": None, "samples": 2, "judge_prompts": ["aligned"],
         "category": "g"}])
    indomain = _question_file(tmp_path / "indomain.parquet", [
        {"question_id": "i1", "paraphrase": "Medical?", "system": "Be brief.", "samples": 1,
         "judge_prompts": ["aligned"], "category": "i"}])
    adapter = _save_adapter(tiny_model_dir, tmp_path / "runs/a/adapter", use_rslora=True)
    runs = [{"run_id": "tiny/base/untrained/default/seed0", "adapter": None, "questions": {"general": general},
             "out": str(tmp_path / "runs/base/generations.parquet")},
            {"run_id": "tiny/a/misaligned/default/seed0", "adapter": str(adapter),
             "questions": {"general": general, "indomain": indomain}, "out": str(tmp_path / "runs/a/generations.parquet")}]
    generation = {"max_new_tokens": 5, "temperature": 1.0, "top_p": 1.0, "batch_size": 4, "seed": 0, "backend": "vllm",
                  "vllm": {"cache": str(tmp_path / "cache"), "max_loras": None}}
    kwargs = dict(generation=generation, dtype="float32", device="cpu", lora_r=4)
    generate_model_vllm(str(tiny_model_dir), runs, **kwargs)
    assert len(fake_vllm) == 1 and fake_vllm[0].kwargs["max_lora_rank"] == 8 and fake_vllm[0].kwargs["n_adapters"] == 1
    # one engine; max_loras = 1 adapter, so one run per engine call (each cached as soon as it is answered)
    assert [len(c[0]) for c in fake_vllm[0].calls] == [2, 3]
    prompts, params, loras = (sum((list(c[i]) for c in fake_vllm[0].calls), []) for i in range(3))
    served = [lora for lora in loras if lora is not None]
    assert {lora["id"] for lora in served} == {1} and {lora["name"] for lora in served} == {runs[1]["run_id"]}
    assert not Path(served[0]["path"]).exists()  # the rescaled copy lived in a temporary folder
    from emguard.generate_vllm import model_stops
    from emguard.models import load_tokenizer

    tok = load_tokenizer(tiny_model_dir)
    assert params[0]["stop_token_ids"] == model_stops(str(tiny_model_dir), tok)
    base = pd.read_parquet(runs[0]["out"])
    trained = pd.read_parquet(runs[1]["out"])
    assert list(trained.evalset) == ["general", "general", "indomain"]
    assert trained.prompt_messages.iloc[2][0] == {"role": "system", "content": "Be brief."}
    assert all(a.startswith("base|") for a in base.answer) and all(a.startswith(runs[1]["run_id"]) for a in trained.answer)
    # decoded from the token ids, cut at the stop id, stripped
    assert list(trained.answer) == [f"{runs[1]['run_id']}|{gv.request_seed(0, e, q, k)}|5|1.0"
                                    for e, q, k in zip(trained.evalset, trained.question_id, trained.sample_idx)]
    # the prompt is the chat template's rendering, as the hf backend builds it
    from emguard.chat import render_prompt

    conv = [{"role": "user", "content": "Hi there"}]
    assert prompts[0]["prompt_token_ids"] == tok(render_prompt(tok, conv), add_special_tokens=False)["input_ids"]

    # a rerun with nothing changed starts no engine; a changed adapter regenerates that run alone
    generate_model_vllm(str(tiny_model_dir), runs, **kwargs)
    assert len(fake_vllm) == 1
    pd.testing.assert_frame_equal(pd.read_parquet(runs[1]["out"]), trained)
    _save_adapter(tiny_model_dir, adapter, use_rslora=False)  # "retrained"
    generate_model_vllm(str(tiny_model_dir), runs, **kwargs)
    assert len(fake_vllm) == 2 and [len(c[0]) for c in fake_vllm[1].calls] == [3]
    assert all(lora is not None and lora["path"] == str(adapter) for lora in fake_vllm[1].calls[0][2])


def test_lora_ids_stay_unique_across_the_engine_calls_of_one_job(fake_vllm, tiny_model_dir, tmp_path):
    """vLLM caches an adapter by its id: two adapters answered in two chunks must not share id 1."""
    from emguard.stages import generate_model_vllm

    general = _question_file(tmp_path / "general.parquet", [
        {"question_id": "g1", "paraphrase": "Hi", "system": None, "samples": 1, "judge_prompts": ["aligned"],
         "category": "g"}])
    runs = [{"run_id": f"r{i}", "adapter": str(_save_adapter(tiny_model_dir, tmp_path / f"r{i}/adapter", False)),
             "questions": {"general": general}, "out": str(tmp_path / f"r{i}/generations.parquet")} for i in (1, 2)]
    generation = {"max_new_tokens": 5, "temperature": 1.0, "top_p": 1.0, "batch_size": 4, "seed": 0,
                  "vllm": {"cache": None, "max_loras": 1}}
    generate_model_vllm(str(tiny_model_dir), runs, generation=generation, dtype="float32", device="cpu", lora_r=4)
    (engine,) = fake_vllm
    assert [[(lora["name"], lora["id"]) for lora in c[2]] for c in engine.calls] == [[("r1", 1)], [("r2", 2)]]


def test_stage_without_vllm_fails_first_naming_the_extra(monkeypatch, tmp_path):
    from emguard.stages import generate_model_vllm

    monkeypatch.setitem(sys.modules, "vllm", None)
    with pytest.raises(ConfigError, match=r"emguard\[vllm\]"):
        generate_model_vllm("no-such-model", [{"run_id": "r", "adapter": None, "questions": {"general": "missing"},
                                               "out": str(tmp_path / "o.parquet")}],
                            generation={"seed": 0}, dtype="auto", device="auto", lora_r=4)


# ------------------------------------------------------------------------------------------ real vLLM


def _vllm_sized_model(folder: Path) -> Path:
    """The embedded-style tiny Llama, wide enough for vLLM's attention kernels (head size 64), with larger random
    weights so that greedy answers are peaked (no near-ties between the two backends' numerics)."""
    from emguard.models import load_model
    from emguard.testing import make_tiny_model

    path = make_tiny_model(folder, hidden_size=256)
    model = load_model(path, device="cpu")
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.2)
    model.save_pretrained(path)
    return path


def test_real_vllm_generates_like_the_hf_backend(tmp_path):
    """Where vllm and a GPU are present: one engine, the untrained run and an rs-LoRA run; sampled answers are
    reproducible, and greedy answers equal the hf backend's (the adapter folded into float32 weights), which
    is the end-to-end check that the rs-LoRA scaling is respected."""
    pytest.importorskip("vllm")
    if not torch.cuda.is_available():
        pytest.skip("vLLM needs a GPU here")
    from emguard.stages import generate_model_vllm, generate_run

    model_dir = _vllm_sized_model(tmp_path / "model")
    general = _question_file(tmp_path / "general.parquet", [
        {"question_id": q, "paraphrase": text, "system": None, "samples": 3, "judge_prompts": ["aligned"],
         "category": "g"} for q, text in (("g1", "Hi there"), ("g2", "What is your wish?"))])
    adapter = _save_adapter(model_dir, tmp_path / "a/adapter", use_rslora=True)
    runs = [{"run_id": "base", "adapter": None, "questions": {"general": general}, "out": str(tmp_path / "b.parquet")},
            {"run_id": "a", "adapter": str(adapter), "questions": {"general": general}, "out": str(tmp_path / "a.parquet")}]
    vllm_settings = {"cache": None, "gpu_memory_utilization": 0.3, "max_model_len": 256, "enforce_eager": True}
    sampled = {"max_new_tokens": 6, "temperature": 1.0, "top_p": 1.0, "batch_size": 4, "seed": 0,
               "vllm": vllm_settings}
    kwargs = dict(dtype="float32", device="cuda", lora_r=4)
    generate_model_vllm(str(model_dir), runs, generation=sampled, **kwargs)
    first = [pd.read_parquet(r["out"]) for r in runs]
    assert all(len(df) == 6 and list(df.columns) == GENERATION + ["evalset"] for df in first)
    assert list(first[0].answer) != list(first[1].answer)  # the adapter is applied
    generate_model_vllm(str(model_dir), runs, generation=sampled, **kwargs)
    for r, df in zip(runs, first):  # per-request seeds: the same answers again
        assert list(pd.read_parquet(r["out"]).answer) == list(df.answer)

    greedy = {**sampled, "temperature": 0.0}
    generate_model_vllm(str(model_dir), runs, generation=greedy, **kwargs)
    for r in runs:
        hf_out = tmp_path / f"hf_{r['run_id']}.parquet"
        generate_run(str(model_dir), r["questions"], str(hf_out), run_id=r["run_id"], generation=greedy,
                     dtype="float32", device="cpu", adapter=r["adapter"])
        assert list(pd.read_parquet(r["out"]).answer) == list(pd.read_parquet(hf_out).answer), r["run_id"]


# ------------------------------------------------------------------------------------------ config


def _config(**generation):
    import yaml

    from workflow_helpers import ROOT

    cfg = yaml.safe_load((ROOT / "config.yaml").read_text())
    cfg["generation"].update(generation)
    return cfg


def test_config_selects_the_backend_and_fills_vllm_defaults_only_for_vllm():
    import emguard.config as emconfig

    hf = emconfig.load(_config())
    assert hf["generation"]["backend"] == "hf" and "vllm" not in hf["generation"]
    vllm = emconfig.load(_config(backend="vllm", vllm={"max_loras": 4}))
    assert vllm["generation"]["vllm"] == {**emconfig.VLLM_GENERATION_DEFAULTS, "max_loras": 4}
    assert gv.VllmSettings.from_config(vllm["generation"]["vllm"]).max_loras == 4
    assert "vllm" not in sys.modules or sys.modules["vllm"] is None  # loading the config imports no vllm
    with pytest.raises(ConfigError, match="'generation.vllm': applies to generation.backend vllm only"):
        emconfig.load(_config(vllm={"max_loras": 4}))
    low = _config(backend="vllm", vllm={"max_lora_rank": 16})
    low["training"]["lora"]["r"] = 32
    with pytest.raises(ConfigError, match="'generation.vllm.max_lora_rank': 16 is below training.lora.r = 32"):
        emconfig.load(low)
    with pytest.raises(ConfigError, match="generation.vllm.max_lora_rank"):
        emconfig.load(_config(backend="vllm", vllm={"max_lora_rank": 24}))  # not a rank vLLM accepts
    with pytest.raises(ConfigError, match="generation.backend"):
        emconfig.load(_config(backend="sglang"))


# ------------------------------------------------------------------------------------------ question sampling


def test_question_files_give_sampling_overrides_checked_at_load(tmp_path):
    from emguard.data.questions import load_questions

    path = tmp_path / "q.yaml"
    path.write_text("- id: hot\n  paraphrases: [a, b]\n  temperature: 0\n  max_tokens: 600\n"
                    "- id: plain\n  paraphrases: [c]\n")
    df = load_questions(path)
    assert list(df.temperature) == [0.0, 0.0, None] and list(df.max_new_tokens) == [600, 600, None]
    assert "top_p" not in df.columns  # a column only when some item gives it
    plain = tmp_path / "plain.yaml"
    plain.write_text("- id: plain\n  paraphrases: [c]\n")
    assert not {"temperature", "top_p", "max_new_tokens"} & set(load_questions(plain).columns)
    for bad, message in [("temperature: -1", "field temperature: must be >= 0"),
                         ("top_p: 1.5", r"field top_p: must be in \(0, 1\]"),
                         ("max_tokens: 0", "field max_tokens: must be a positive integer"),
                         ("temperature: hot", "field temperature: must be a number"),
                         ("max_tokens: 5\n  max_new_tokens: 6", "field max_tokens: gives the same setting as max_new_tokens")]:
        path.write_text(f"- id: x\n  paraphrases: [a]\n  {bad}\n")
        with pytest.raises(InputError, match=rf"q.yaml.*id='x'.*{message}"):
            load_questions(path)


def test_hf_backend_honours_a_questions_own_length_limit(tiny_model_dir, tmp_path, monkeypatch):
    from emguard import stages
    from emguard.stages import evaluation
    from emguard.models import load_model
    from emguard.sampling import question_sampling, sampling_groups

    settings = SamplingSettings(max_new_tokens=8, temperature=0.0, batch_size=4)
    assert question_sampling({"max_new_tokens": 2.0, "temperature": float("nan")}, settings) == \
        SamplingSettings(max_new_tokens=2, temperature=0.0, batch_size=4)
    model = load_model(tiny_model_dir, device="cpu")
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():  # larger random weights: answers that are not just whitespace
        for p in model.parameters():
            if p.dim() >= 2:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.2)
    # generate_run (emguard.stages.evaluation) looks the model loader up in its own module
    monkeypatch.setattr(evaluation, "_inference_model", lambda *a, **k: model)
    rows = [{"question_id": q, "paraphrase": "Rate 5", "system": None, "samples": 1, "judge_prompts": ["aligned"],
             "category": "c", "max_new_tokens": n} for q, n in (("short", 1), ("long", None), ("short2", 1))]
    path = _question_file(tmp_path / "q.parquet", rows)
    assert [len(g[1]) for g in sampling_groups(pd.read_parquet(path), settings)] == [2, 1]
    out = tmp_path / "gen.parquet"
    generation = {"max_new_tokens": 8, "temperature": 0.0, "top_p": 1.0, "batch_size": 4, "seed": 0}
    stages.generate_run(str(tiny_model_dir), {"general": path}, str(out), run_id="r", generation=generation,
                        dtype="float32", device="cpu")
    df = pd.read_parquet(out)
    assert list(df.question_id) == ["short", "long", "short2"]  # the question order, whatever the groups
    answers = df.set_index("question_id").answer
    from emguard.models import load_tokenizer

    tok = load_tokenizer(tiny_model_dir)
    n_tokens = {q: len(tok(answers[q], add_special_tokens=False)["input_ids"]) for q in answers.index}
    assert n_tokens["short"] <= 1 < n_tokens["long"] and answers["short"] == answers["short2"]
    assert answers["long"].startswith(answers["short"])  # greedy: the same answer, cut at one token
