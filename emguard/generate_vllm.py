"""Answers of every run of one base model from one vLLM engine (``generation.backend: vllm``).

Written against the documented offline API of vLLM 0.26+ (0.26 is the first release that requires transformers 5,
as emguard does) and checked against the source of 0.33.0, the newest release at the time of writing (never run
here: this machine has neither a GPU nor vllm): ``vllm.LLM(model, enable_lora=True, max_lora_rank, max_loras,
...)``, ``LLM.generate(prompts,
sampling_params, *, use_tqdm, lora_request)`` with one ``SamplingParams`` and one ``LoRARequest`` (or None)
per prompt, ``SamplingParams(temperature, top_p, max_tokens, seed, stop_token_ids)`` and
``vllm.lora.request.LoRARequest(lora_name, lora_int_id, lora_path)``. Nothing here imports vllm at module
level: planning the workflow and the unit tests need none (the tests pass a fake engine with ``generate``'s
signature and plain factories for the two vLLM classes).

How the answers relate to the hf backend's (:mod:`emguard.generate`):

* **Prompts** are rendered and tokenised by emguard (:func:`emguard.chat.render_prompt`), the same token ids
  the hf backend feeds ``model.generate``, and passed as ``{"prompt_token_ids": ...}``; answers stop at the same
  stop ids (:func:`emguard.generate.stop_token_ids`) and their token ids are decoded by emguard's tokenizer the
  way the hf backend decodes (without special tokens, stripped: :func:`output_text`).
* **Adapters**: the base model is loaded once; each trained run's adapter is a ``LoRARequest`` (name = run id,
  ids 1..N in the order the runs are given), the untrained run has none. **rs-LoRA**: PEFT scales an rs-LoRA
  update by alpha / sqrt(r), plain LoRA by alpha / r. vLLM 0.33 reads ``use_rslora`` from ``adapter_config.json``
  (``vllm.lora.peft_helper.PEFTHelper``); rather than depend on every release in the extra's range doing so,
  :func:`vllm_adapter` writes a temporary copy whose ``lora_B``
  weights are multiplied by sqrt(r) and whose config says ``use_rslora: false``: any vLLM then applies
  alpha / r * sqrt(r) * B A = alpha / sqrt(r) * B A, the trained update (:func:`rslora_factor`). Plain LoRA
  adapters are served as they are.
* **Seeds**: every request carries its own seed, :func:`request_seed` (the generation seed, the evalset, the
  question id and the sample index), so an answer does not depend on which other requests share a batch or on
  how many runs the engine serves. The run id is not part of it: every run answers sample ``k`` of a question
  with the same random stream (common random numbers, as the hf backend seeds every run with the same
  ``generation.seed``); the answers still differ with the adapter. vLLM's sampler is not the hf backend's, so
  the two backends' answers to one seed differ; each is reproducible on its own.
* **Sampling**: ``generation.temperature`` / ``top_p`` / ``max_new_tokens``, replaced per question by the
  question file's own values (:func:`emguard.sampling.question_sampling`); ``temperature: 0`` is greedy, and
  identical greedy requests (same run, prompt and length) are generated once.
* **Cache** (:class:`GenerationCache`): one answer table per run, keyed by :func:`run_cache_key` (the base
  model, the adapter's content, the run's questions, the sampling settings, the seed and the engine's
  identity). The job generates only for runs without a cached table, so retraining one run regenerates that
  run alone even though Snakemake reruns the model's whole generation job.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import re
import shutil
import sys
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import pandas as pd

from emguard.errors import ConfigError, InputError
from emguard.generate import SamplingSettings, question_conversation
from emguard.sampling import SAMPLING_COLUMNS, question_sampling
from emguard.schemas import GENERATION

log = logging.getLogger("emguard")

#: the ``max_lora_rank`` values vLLM accepts (``vllm.config.lora.MaxLoRARanks``)
VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
#: adapters active in one batch when ``generation.vllm.max_loras`` is null (each slot costs GPU memory)
DEFAULT_MAX_LORAS = 8
#: bump when the meaning of a cached table changes (its columns, the seed derivation, the prompt rendering)
CACHE_FORMAT = 1
#: the install hint every "vllm missing" error gives
INSTALL_HINT = "pip install 'emguard[vllm]' (or snakemake --sdm conda, which builds envs/vllm.yaml)"

_LORA_B = re.compile(r"(^|\.)lora_(embedding_)?B(\.|$)")


@dataclass(frozen=True)
class VllmSettings:
    """The ``generation.vllm`` section (defaults: ``emguard.config.VLLM_GENERATION_DEFAULTS``)."""

    # Parameters of the engine (vllm.LLM)
    gpu_memory_utilization: float = 0.85  # share of the GPU's memory vLLM takes for weights and KV cache
    max_model_len: int | None = None  # prompt + answer tokens the engine reserves; None: the model's
    tensor_parallel_size: int = 1  # GPUs the model is split over
    max_loras: int | None = None  # adapters active in one batch; None: all of the job's, at most DEFAULT_MAX_LORAS
    max_lora_rank: int | None = None  # None: training.lora.r rounded up to VLLM_LORA_RANKS
    max_num_seqs: int | None = None  # sequences decoded at once; None: vLLM's default
    enforce_eager: bool = False  # no CUDA graphs
    # Not an engine setting
    cache: str | None = "results/cache/generations"  # per-run answer tables; None: no cache

    @classmethod
    def from_config(cls, section: dict | None) -> "VllmSettings":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(section or {}) - known)
        if unknown:
            raise ConfigError(f"config key 'generation.vllm.{unknown[0]}': unknown key (allowed: {', '.join(sorted(known))})")
        return cls(**(section or {}))


def require_vllm(key: str = "generation.backend", alternative: str = "or set generation.backend: hf"):
    """The ``vllm`` module, or a :class:`ConfigError` naming the config ``key`` that selected it and the extra to
    install. Called when a job that uses it starts, never when the config is loaded (planning the workflow needs no
    vllm): the generation jobs (``generation.backend``) and GRPO's rollouts (``rl.training.use_vllm``)."""
    try:
        import vllm
    except ImportError as exc:
        raise ConfigError(f"config key '{key}': vllm is selected but the vllm package cannot be imported ({exc}); "
                          f"install the extra: {INSTALL_HINT}, {alternative}") from exc
    return vllm


def lora_rank_slot(r: int, configured: int | None = None) -> int:
    """The engine's ``max_lora_rank``: ``configured`` when given (at least ``r``), else the smallest rank vLLM
    accepts that holds ``r``."""
    if configured is not None:
        if configured not in VLLM_LORA_RANKS:
            raise ConfigError(f"config key 'generation.vllm.max_lora_rank': {configured} is not one of {VLLM_LORA_RANKS}")
        if configured < r:
            raise ConfigError(f"config key 'generation.vllm.max_lora_rank': {configured} is below training.lora.r = {r}")
        return configured
    for rank in VLLM_LORA_RANKS:
        if rank >= r:
            return rank
    raise ConfigError(f"config key 'training.lora.r': {r} is above {VLLM_LORA_RANKS[-1]}, the largest LoRA rank vLLM "
                      f"serves; use generation.backend: hf")


def max_loras_for(n_adapters: int, configured: int | None = None) -> int:
    """``max_loras``: the configured value, else every adapter of the job up to :data:`DEFAULT_MAX_LORAS`."""
    if configured is not None:
        return int(configured)
    return max(1, min(n_adapters, DEFAULT_MAX_LORAS))


def request_seed(seed: int, evalset: str | None, question_id: str, sample_idx: int) -> int:
    """A request's sampling seed in [0, 2**31): sha256 of the generation seed, evalset, question id and sample
    index, so sample ``k`` of a question gets the same seed in every run, job and batch."""
    text = "\x1f".join(["emguard-vllm", str(int(seed)), "" if evalset is None else str(evalset), str(question_id),
                        str(int(sample_idx))])
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "big") % 2**31


# ----------------------------------------------------------------------------------------- adapters


def read_adapter_config(adapter_dir: str | Path) -> dict:
    path = Path(adapter_dir) / "adapter_config.json"
    try:
        config = json.loads(path.read_text())
    except FileNotFoundError:
        raise InputError(f"{path}: missing (an adapter folder as PEFT saves it holds adapter_config.json)") from None
    except json.JSONDecodeError as exc:
        raise InputError(f"{path}: line {exc.lineno}: not valid JSON ({exc.msg})") from exc
    if not isinstance(config, dict):
        raise InputError(f"{path}: expected a JSON object, got {type(config).__name__}")
    return config


def check_servable(config: dict, where: str, max_rank: int) -> None:
    """What this backend cannot serve exactly, refused before the engine loads: another PEFT method, DoRA (vLLM
    has none), per-module ranks or alphas (the rs-LoRA rescaling uses the adapter's one r; emguard's training
    writes none), a rank above the engine's."""
    peft_type = str(config.get("peft_type", "LORA")).upper()
    if peft_type != "LORA":
        raise InputError(f"{where}: key peft_type: {config.get('peft_type')!r}; vLLM serves LoRA adapters only")
    if config.get("use_dora"):
        raise InputError(f"{where}: key use_dora: DoRA adapters are not served by vLLM; use generation.backend: hf")
    for key in ("rank_pattern", "alpha_pattern"):
        if config.get(key):
            raise InputError(f"{where}: key {key}: per-module ranks or alphas are not handled by the vllm backend "
                             f"(its rs-LoRA rescaling uses one r per adapter); use generation.backend: hf")
    for key in ("r", "lora_alpha"):
        value = config.get(key)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
            raise InputError(f"{where}: key {key}: must be a positive number, got {value!r}")
    if config["r"] > max_rank:
        raise InputError(f"{where}: key r: {config['r']} is above the engine's max_lora_rank {max_rank} "
                         f"(generation.vllm.max_lora_rank)")


def rslora_factor(config: dict) -> float:
    """What ``lora_B`` is multiplied by so that plain LoRA scaling (alpha / r) gives the adapter's own scaling:
    sqrt(r) for rs-LoRA (alpha / sqrt(r) = alpha / r * sqrt(r)), 1 otherwise."""
    return math.sqrt(float(config["r"])) if config.get("use_rslora") else 1.0


def rescale_lora_b(tensors: dict, factor: float) -> dict:
    """``tensors`` (name -> tensor) with every ``lora_B`` / ``lora_embedding_B`` weight times ``factor``, computed
    in float32 and stored in the tensor's own dtype; other tensors unchanged."""
    out = {}
    for name, tensor in tensors.items():
        if factor != 1.0 and _LORA_B.search(name):
            out[name] = (tensor.float() * factor).to(tensor.dtype).contiguous()
        else:
            out[name] = tensor
    return out


def vllm_adapter(adapter_dir: str | Path, work_dir: str | Path, max_rank: int) -> str:
    """The folder vLLM should load for ``adapter_dir``: the folder itself for plain LoRA, else (rs-LoRA) a copy
    in ``work_dir`` with ``lora_B`` rescaled (:func:`rslora_factor`) and ``use_rslora: false``."""
    from safetensors.torch import load_file, save_file

    adapter_dir = Path(adapter_dir)
    config = read_adapter_config(adapter_dir)
    check_servable(config, str(adapter_dir / "adapter_config.json"), max_rank)
    factor = rslora_factor(config)
    if factor == 1.0:
        return str(adapter_dir)
    weights = adapter_dir / "adapter_model.safetensors"
    if not weights.is_file():
        raise InputError(f"{weights}: missing (the adapter's weights, as PEFT saves them)")
    out = Path(work_dir)
    out.mkdir(parents=True, exist_ok=True)
    tensors = load_file(str(weights))
    if not any(_LORA_B.search(name) for name in tensors):
        raise InputError(f"{weights}: no lora_B weight found; not a LoRA adapter")
    save_file(rescale_lora_b(tensors, factor), str(out / "adapter_model.safetensors"), metadata={"format": "pt"})
    (out / "adapter_config.json").write_text(json.dumps({**config, "use_rslora": False}, indent=2, sort_keys=True))
    for extra in adapter_dir.iterdir():  # tokenizer files, README: copied as they are
        if extra.is_file() and extra.name not in ("adapter_config.json", "adapter_model.safetensors"):
            shutil.copy2(extra, out / extra.name)
    log.info("rs-LoRA adapter %s: lora_B x %.4f (sqrt r = %s) for vLLM's alpha / r scaling", adapter_dir, factor,
             config["r"])
    return str(out)


# ----------------------------------------------------------------------------------------- requests


@dataclass(frozen=True, eq=False)
class RunSpec:
    """One run to answer: its questions (all evalsets, an ``evalset`` column) and adapter (None: untrained)."""

    run_id: str
    questions: pd.DataFrame
    adapter: str | None = None
    checkpoint: str = "final"


@dataclass(frozen=True)
class Request:
    """One answer to generate: sample ``sample_idx`` of a question for a run."""

    run_id: str
    evalset: str | None
    question_id: str
    sample_idx: int
    messages: tuple  # ((role, content), ...)
    prompt_ids: tuple
    sampling: SamplingSettings
    seed: int

    def dedup_key(self) -> tuple | None:
        """Identical greedy requests give one answer: their shared key (None when sampling)."""
        if self.sampling.temperature != 0:
            return None
        return self.run_id, self.prompt_ids, self.sampling.max_new_tokens


def _nullable(value) -> str | None:
    if value is None or (isinstance(value, float) and value != value):
        return None
    return str(value)


def build_requests(run: RunSpec, encode: Callable[[list[dict]], Sequence[int]], settings: SamplingSettings,
                   seed: int) -> list[Request]:
    """Every answer a run needs, in the order of its question table (then sample index). ``encode``: a
    conversation -> its prompt token ids (the chat template with the assistant opener)."""
    questions = run.questions
    for col in ("question_id", "paraphrase", "system", "samples"):
        if col not in questions.columns:
            raise InputError(f"questions of run {run.run_id}: missing column {col!r}")
    has_evalset = "evalset" in questions.columns
    requests = []
    for row in questions.itertuples(index=False):
        n = int(row.samples)
        if n < 0:
            raise InputError(f"questions of run {run.run_id}: question_id={row.question_id!r}: samples must be >= 0, "
                             f"got {n}")
        conv = question_conversation(str(row.paraphrase), _nullable(row.system))
        ids = tuple(int(t) for t in encode(conv))
        evalset = str(row.evalset) if has_evalset else None
        sampling = question_sampling(row, settings)
        for k in range(n):
            requests.append(Request(run.run_id, evalset, str(row.question_id), k,
                                    tuple((m["role"], m["content"]) for m in conv), ids, sampling,
                                    request_seed(seed, evalset, row.question_id, k)))
    return requests


def engine_batch(requests: Sequence[Request], lora_of: dict[str, Any], stops: Sequence[int],
                 sampling_params: Callable[..., Any]) -> tuple[list[dict], list[Any], list[Any], list[int]]:
    """The engine's inputs for ``requests``: prompts (``{"prompt_token_ids": [...]}``), one sampling-params
    object and one LoRA request (None: the base model) per prompt, and for every request the index of the
    prompt that answers it (identical greedy requests share one)."""
    prompts, params, loras, slot = [], [], [], []
    seen: dict[tuple, int] = {}
    for req in requests:
        key = req.dedup_key()
        if key is not None and key in seen:
            slot.append(seen[key])
            continue
        s = req.sampling
        slot.append(len(prompts))
        if key is not None:
            seen[key] = len(prompts)
        prompts.append({"prompt_token_ids": list(req.prompt_ids)})
        params.append(sampling_params(temperature=float(s.temperature), top_p=float(s.top_p),
                                      max_tokens=int(s.max_new_tokens), seed=int(req.seed),
                                      stop_token_ids=list(stops), skip_special_tokens=True))
        loras.append(lora_of.get(req.run_id))
    return prompts, params, loras, slot


def answer_tables(runs: Sequence[RunSpec], requests: Sequence[Request], answers: Sequence[str],
                  seed: int) -> dict[str, pd.DataFrame]:
    """One generation table per run (the contract of :func:`emguard.generate.generate_for_questions`, with an
    ``evalset`` column when the run's questions have one) from the answers to ``requests``."""
    if len(answers) != len(requests):
        raise ValueError(f"{len(answers)} answers for {len(requests)} requests")
    rows: dict[str, list[dict]] = {r.run_id: [] for r in runs}
    with_evalset = {r.run_id: "evalset" in r.questions.columns for r in runs}
    checkpoint = {r.run_id: r.checkpoint for r in runs}
    for req, ans in zip(requests, answers):
        row = {"run_id": req.run_id, "question_id": req.question_id, "sample_idx": req.sample_idx,
               "prompt_messages": [{"role": role, "content": content} for role, content in req.messages],
               "answer": ans, "seed": int(seed), "checkpoint": checkpoint[req.run_id]}
        if with_evalset[req.run_id]:
            row["evalset"] = req.evalset
        rows[req.run_id].append(row)
    tables = {}
    for run in runs:
        columns = GENERATION + (["evalset"] if with_evalset[run.run_id] else [])
        df = pd.DataFrame(rows[run.run_id], columns=columns)
        tables[run.run_id] = df.astype({"sample_idx": "int64", "seed": "int64"}) if len(df) else df
    return tables


def output_text(output, decode: Callable[[list[int]], str] | None = None, stops: Sequence[int] = ()) -> str:
    """The answer of one ``vllm.RequestOutput`` (its first completion). With ``decode`` (the tokenizer's decode
    without special tokens) exactly as the hf backend turns tokens into text: the completion's token ids cut at
    the first stop id, decoded at once (vLLM's own ``text`` is detokenised incrementally, which can differ on
    byte-level tokens that split a character); else vLLM's ``text``. Stripped either way."""
    completions = getattr(output, "outputs", None)
    if not completions:
        raise ValueError(f"engine output without completions: {output!r}")
    if decode is None:
        return str(completions[0].text).strip()
    ids, stop_set = [int(t) for t in completions[0].token_ids], set(stops)
    for k, t in enumerate(ids):
        if t in stop_set:
            ids = ids[:k]
            break
    return decode(ids).strip()


def lora_ids(runs: Iterable[RunSpec]) -> dict[str, int]:
    """LoRA ids 1..N for the runs with an adapter, in run order. vLLM caches a loaded adapter by its id, so one
    engine must never see one id for two adapters: assign them once per job, over all of its runs."""
    ids = {}
    for run in runs:
        if run.adapter is not None:
            ids[run.run_id] = len(ids) + 1
    return ids


def generate_runs(engine, runs: Sequence[RunSpec], *, encode: Callable[[list[dict]], Sequence[int]],
                  stops: Sequence[int], settings: SamplingSettings, seed: int, lora_paths: dict[str, str],
                  sampling_params: Callable[..., Any], lora_request: Callable[[str, int, str], Any],
                  ids: dict[str, int] | None = None,
                  decode: Callable[[list[int]], str] | None = None) -> dict[str, pd.DataFrame]:
    """Every run's answers from one ``engine.generate`` call: the runs' requests together (vLLM schedules them
    into full batches whatever run they belong to), each with its run's LoRA request. ``lora_paths``: run id ->
    the adapter folder vLLM loads (runs without one use the base model); ``ids``: run id -> LoRA id (default
    :func:`lora_ids` of ``runs``); ``decode``: token ids -> text (:func:`output_text`)."""
    ids = ids if ids is not None else lora_ids(r for r in runs if r.run_id in lora_paths)
    lora_of = {}
    for run in runs:
        if run.run_id in lora_paths:
            if run.run_id not in ids:
                raise ValueError(f"run {run.run_id}: no LoRA id")
            lora_of[run.run_id] = lora_request(run.run_id, ids[run.run_id], lora_paths[run.run_id])
    requests = [req for run in runs for req in build_requests(run, encode, settings, seed)]
    if not requests:
        return answer_tables(runs, [], [], seed)
    prompts, params, loras, slot = engine_batch(requests, lora_of, stops, sampling_params)
    outputs = engine.generate(prompts, params, use_tqdm=False, lora_request=loras)
    if len(outputs) != len(prompts):
        raise RuntimeError(f"the engine returned {len(outputs)} outputs for {len(prompts)} prompts")
    texts = [output_text(o, decode, stops) for o in outputs]
    return answer_tables(runs, requests, [texts[i] for i in slot], seed)


# ----------------------------------------------------------------------------------------- cache


def file_digest(path: Path, h=None):
    h = h or hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h


def adapter_digest(adapter_dir: str | Path | None) -> str | None:
    """sha256 over an adapter folder's files (relative names and bytes, sorted): what the adapter is, wherever it
    lies. None for no adapter."""
    if adapter_dir is None:
        return None
    root = Path(adapter_dir)
    h = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        h.update(str(path.relative_to(root)).encode() + b"\0")
        file_digest(path, h)
    return h.hexdigest()


def model_identity(model_path: str) -> dict:
    """The base model as the cache sees it: a hub id as given; a local folder by its small files' bytes (config,
    tokenizer, chat template) and its large files' names and sizes (hashing 15 GB of weights per job would cost
    more than the cache saves)."""
    root = Path(model_path)
    if not root.is_dir():
        return {"model": str(model_path)}
    files = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = str(path.relative_to(root))
        size = path.stat().st_size
        files[rel] = file_digest(path).hexdigest() if size <= 10 * 2**20 else f"size:{size}"
    return {"model": root.name, "files": files}


def questions_identity(questions: pd.DataFrame) -> list:
    """The question rows as they reach generation (the columns that change a prompt, a sample count or the
    sampling), in order."""
    cols = [c for c in ("evalset", "question_id", "paraphrase", "system", "samples", *SAMPLING_COLUMNS)
            if c in questions.columns]
    return [[_nullable(v) for v in row] for row in questions[cols].itertuples(index=False, name=None)]


def code_identity() -> str:
    """A hash of the emguard code an answer depends on (this module, generation, sampling and chat rendering): an
    edit that changes answers then misses the cache instead of serving tables the old code wrote."""
    import emguard.chat
    import emguard.generate
    import emguard.sampling

    h = hashlib.sha256()
    for module in (sys.modules[__name__], emguard.generate, emguard.sampling, emguard.chat):
        h.update(Path(module.__file__).read_bytes())
    return h.hexdigest()[:16]


def run_cache_key(*, run: RunSpec, model: dict, adapter: str | None, settings: SamplingSettings, seed: int,
                  engine: dict) -> str:
    """The cache key of one run's answer table: everything that changes an answer (run id, base model, adapter
    content, questions, sampling settings and seed, the engine's identity), :data:`CACHE_FORMAT` and the
    generation code (:func:`code_identity`)."""
    payload = {"format": CACHE_FORMAT, "code": code_identity(), "run_id": run.run_id, "checkpoint": run.checkpoint, "model": model,
               "adapter": adapter, "questions": questions_identity(run.questions),
               "sampling": {"max_new_tokens": settings.max_new_tokens, "temperature": settings.temperature,
                            "top_p": settings.top_p}, "seed": int(seed), "engine": engine}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


class GenerationCache:
    """Per-run answer tables in a folder, ``<key>.parquet`` (written via a temporary name, so a crash leaves
    no half table). ``folder`` None: a cache that holds nothing."""

    def __init__(self, folder: str | Path | None):
        self.folder = None if folder is None else Path(folder)

    def path(self, key: str) -> Path | None:
        return None if self.folder is None else self.folder / f"{key}.parquet"

    def get(self, key: str) -> pd.DataFrame | None:
        path = self.path(key)
        if path is None or not path.is_file():
            return None
        return pd.read_parquet(path)

    def put(self, key: str, table: pd.DataFrame) -> None:
        from emguard.io import write_parquet

        path = self.path(key)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            write_parquet(table, path)


def cached_generate(runs: Sequence[RunSpec], cache: GenerationCache, keys: dict[str, str],
                    generate: Callable[[list[RunSpec]], dict[str, pd.DataFrame]],
                    chunk: int | None = None) -> dict[str, pd.DataFrame]:
    """Every run's table: from ``cache`` where its key is there, else from ``generate`` (with missing runs only,
    ``chunk`` runs per call, all at once when None; never called when none is missing), each chunk cached as
    soon as it is answered, so a job killed at its time limit resumes where it stopped."""
    tables, missing = {}, []
    for run in runs:
        hit = cache.get(keys[run.run_id])
        if hit is None:
            missing.append(run)
        else:
            tables[run.run_id] = hit
    log.info("vllm generation: %d of %d runs cached, %d to generate", len(tables), len(runs), len(missing))
    step = max(1, chunk or len(missing) or 1)
    for start in range(0, len(missing), step):
        part = missing[start:start + step]
        fresh = generate(part)
        for run in part:
            cache.put(keys[run.run_id], fresh[run.run_id])
            tables[run.run_id] = fresh[run.run_id]
    return tables


# ----------------------------------------------------------------------------------------- the engine


def load_engine(model_path: str, settings: VllmSettings, *, dtype: str, max_lora_rank: int, n_adapters: int,
                seed: int):
    """One ``vllm.LLM`` for the base model with LoRA enabled (``max_loras`` sized to the job's adapters)."""
    vllm = require_vllm()
    kwargs: dict[str, Any] = dict(model=str(model_path), tokenizer=str(model_path), dtype=dtype, seed=int(seed),
                                  gpu_memory_utilization=settings.gpu_memory_utilization,
                                  tensor_parallel_size=settings.tensor_parallel_size,
                                  enforce_eager=settings.enforce_eager)
    if n_adapters:
        kwargs.update(enable_lora=True, max_lora_rank=max_lora_rank,
                      max_loras=max_loras_for(n_adapters, settings.max_loras))
    if settings.max_model_len is not None:
        kwargs["max_model_len"] = settings.max_model_len
    if settings.max_num_seqs is not None:
        kwargs["max_num_seqs"] = settings.max_num_seqs
    log.info("vllm %s engine: %s", vllm.__version__, {k: v for k, v in kwargs.items() if k != "tokenizer"})
    return vllm.LLM(**kwargs)


def engine_identity(settings: VllmSettings, dtype: str, version: str) -> dict:
    """What of the engine changes answers (for the cache key): vLLM's version, the dtype, the tensor-parallel
    split, the context length."""
    return {"backend": "vllm", "version": version, "dtype": dtype,
            "tensor_parallel_size": settings.tensor_parallel_size, "max_model_len": settings.max_model_len}


def model_stops(model_path: str, tokenizer) -> list[int]:
    """The stop ids of the hf backend (:func:`emguard.generate.stop_token_ids`): the tokenizer's eos, the model's
    generation-config eos ids and the chat template's end-of-turn marker, without loading the weights."""
    from types import SimpleNamespace

    from transformers import GenerationConfig

    from emguard.generate import stop_token_ids

    try:
        gen_cfg = GenerationConfig.from_pretrained(str(model_path))
    except (OSError, ValueError):  # no generation_config.json: the tokenizer's ids alone
        gen_cfg = None
    return stop_token_ids(SimpleNamespace(generation_config=gen_cfg), tokenizer)


def vllm_classes() -> tuple[Callable[..., Any], Callable[..., Any]]:
    """vLLM's ``SamplingParams`` and ``LoRARequest``."""
    require_vllm()
    from vllm import SamplingParams
    from vllm.lora.request import LoRARequest

    return SamplingParams, LoRARequest


def unique_run_ids(runs: Iterable[RunSpec]) -> None:
    seen = set()
    for run in runs:
        if run.run_id in seen:
            raise InputError(f"run {run.run_id} given twice to one vllm generation job")
        seen.add(run.run_id)
