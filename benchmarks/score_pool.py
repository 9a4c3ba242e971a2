"""Benchmark pool scoring for Interleaving+/++.

CPU mode (default) scores one synthetic benign pool two ways in the same run:
  * batched:  the base model loaded once, K misaligned LoRA adapters attached and switched with peft's
              multi-adapter API, length-sorted batches (:func:`emguard.interleave.score_pool`);
  * naive:    a fresh model load per adapter (and for the base), one example at a time, full logits
              (:func:`emguard.interleave.score_pool_naive`);
asserts that both give the same NLLs and scores to 1e-4, and prints the speed-up. It also measures LoRA
training throughput on the same examples and evaluates the scoring overhead relative to fine-tuning.

The grid comparison (``--grid-domains D --grid-opswap T``; the paper's grid is 4 and 4, ``--grid-domains 0``
skips it) scores the pool for every target of a grid: D EM domains, each scored with its D - 1
leave-one-out adapters, and T OpSwap tiers, each scored with all D. The pipeline's way: one model load,
the pool's NLLs under the base model and the D adapters once (:func:`emguard.interleave.pool_nll`, D + 1
passes), each target's scores read from them (:func:`emguard.interleave.scores_from_nll`). The naive way:
the naive reference once per target (D * D + T * (D + 1) passes). Every target's scores must agree to 1e-4.

``--gpu-qwen7b-shape`` instead measures scoring tokens/s of a random-weight Qwen2.5-7B-shaped model in
bf16 (with K random adapters) and compares the achieved FLOP rate with a large bf16 matmul measured in
the same run.

    python benchmarks/score_pool.py --n-pool 32 --k-adapters 2 --grid-domains 4 --grid-opswap 4
    python benchmarks/score_pool.py --gpu-qwen7b-shape --n-pool 256
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from emguard.chat import IGNORE_INDEX, Encoded, pad_batch  # noqa: E402
from emguard.config import leave_one_out  # noqa: E402
from emguard.interleave import (encode_conversations, length_sorted_batches, make_random_adapter, pool_nll,  # noqa: E402
                                score_encoded, score_pool, score_pool_naive, scores_from_nll)
from emguard.models import LoraSettings, load_model, load_tokenizer  # noqa: E402

DEFAULT_MODEL = Path(__file__).resolve().parents[1] / "resources" / "models" / "smollm2-135m"

_TOPICS = ["photosynthesis", "compound interest", "the water cycle", "binary search", "sourdough bread",
           "the French revolution", "plate tectonics", "vaccines", "a job interview", "houseplants",
           "marathon training", "the stock market", "recursion", "black holes", "composting"]
_SENTENCES = [
    "First, it helps to define the key terms clearly.",
    "The main idea is simple once you see the underlying mechanism.",
    "Many people find a concrete example easier to follow than a definition.",
    "Keep in mind that the details vary from case to case.",
    "A common mistake is to skip the preparation step.",
    "Experts usually recommend starting small and building up gradually.",
    "You can check your understanding by explaining it to a friend.",
    "In practice, patience and consistency matter more than talent.",
    "The history of the idea goes back several centuries.",
    "If you want to learn more, a good introductory book is a great next step.",
]


class Stopwatch:
    """Wall-clock and process CPU time together. On a shared machine run with ``--threads 1`` and read the
    CPU-time numbers: they count only this process's work, not the time other jobs held the cores."""

    def __init__(self):
        self.wall0, self.cpu0 = time.perf_counter(), time.process_time()

    def read(self) -> dict:
        return {"wall": time.perf_counter() - self.wall0, "cpu": time.process_time() - self.cpu0}


def synthetic_pool(n: int, seed: int = 0) -> pd.DataFrame:
    """A benign pool with varied answer lengths (about 15 to 220 words)."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        topic = _TOPICS[i % len(_TOPICS)]
        n_sent = int(rng.integers(1, 20))
        answer = " ".join(_SENTENCES[int(k)] for k in rng.integers(0, len(_SENTENCES), n_sent))
        rows.append({"id": f"syn-{i}",
                     "messages": [{"role": "user", "content": f"Can you explain {topic} to me?"},
                                  {"role": "assistant", "content": f"Sure, here is an overview of {topic}. {answer}"}],
                     "domain": "pool", "subset": "benign", "split": "train"})
    return pd.DataFrame(rows)


def max_abs_diff(got: pd.DataFrame, ref: pd.DataFrame, adapter_names: list[str]) -> float:
    """Largest absolute difference over the NLL and score columns of two scorings of one pool."""
    cols = ["nll_base"] + [f"nll_{n}" for n in adapter_names] + ["nll_mis_mean", "score"]
    return max(float(np.nanmax(np.abs(got[c].to_numpy() - ref[c].to_numpy()))) for c in cols)


def training_throughput(model_path, encoded: list[Encoded], pad_id: int, *, batch_size: int, lora_r: int,
                        steps: int) -> dict:
    """LoRA training tokens/s (forward + backward + AdamW step) on the same examples as the scoring."""
    from peft import get_peft_model

    model = load_model(model_path, device="cpu", trainable=True)
    model = get_peft_model(model, LoraSettings(r=lora_r, alpha=2 * lora_r).to_peft())
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    batches = length_sorted_batches([len(e.input_ids) for e in encoded], batch_size)
    # take batches from the middle of the length range, cycling; the first step is a warm-up
    order = [batches[(len(batches) // 2 + k) % len(batches)] for k in range(steps + 1)]
    tokens, examples = 0, 0
    seconds = {"wall": 0.0, "cpu": 0.0}
    for k, idx in enumerate(order):
        batch = pad_batch([encoded[i] for i in idx], pad_id, side="right")
        sw = Stopwatch()
        loss = model(**batch).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        dt = sw.read()
        if k > 0:
            for c in seconds:
                seconds[c] += dt[c]
            tokens += int(batch["attention_mask"].sum())
            examples += len(idx)
    return {"tokens": tokens, "examples": examples, "seconds": seconds, "steps": steps}


def cpu_benchmark(args) -> dict:
    model_path = Path(args.model)
    tmp = Path(tempfile.mkdtemp(prefix="bench-score-pool-"))
    if not (model_path / "config.json").exists():
        from emguard.testing import make_tiny_model

        print(f"[info] {model_path} not found; using the tiny test model", flush=True)
        model_path = make_tiny_model(tmp / "tiny")
    adapters = {f"mis{k}": str(make_random_adapter(model_path, tmp / f"mis{k}", r=args.lora_r, alpha=2 * args.lora_r,
                                                   seed=k + 1))
                for k in range(args.k_adapters)}
    pool = synthetic_pool(args.n_pool, seed=args.seed)

    sw = Stopwatch()
    model = load_model(model_path, device="cpu")
    tok = load_tokenizer(model_path)
    t_load = sw.read()
    sw = Stopwatch()
    fast = score_pool(model, tok, pool, adapters, batch_size=args.batch_size, max_length=args.max_length)
    t_score = sw.read()
    t_fast = {c: t_load[c] + t_score[c] for c in t_load}
    print(f"batched: wall {t_fast['wall']:.2f}s (load {t_load['wall']:.2f}s), cpu {t_fast['cpu']:.2f}s", flush=True)

    sw = Stopwatch()
    naive = score_pool_naive(model_path, adapters, pool, max_length=args.max_length)
    t_naive = sw.read()
    print(f"naive:   wall {t_naive['wall']:.2f}s, cpu {t_naive['cpu']:.2f}s", flush=True)

    max_diff = max_abs_diff(fast, naive, list(adapters))
    assert max_diff < 1e-4, f"batched and naive scores differ by {max_diff:.3g}"
    speedup = {c: t_naive[c] / t_fast[c] for c in t_fast}

    encoded = encode_conversations(tok, [list(m) for m in pool["messages"]], args.max_length)
    real_tokens = sum(len(e.input_ids) for e in encoded)
    passes = args.k_adapters + 1
    train = training_throughput(model_path, encoded, tok.pad_token_id, batch_size=args.batch_size,
                                lora_r=args.lora_r, steps=args.train_steps)
    clock = args.clock
    inf_tok_s = passes * real_tokens / t_score[clock]
    train_tok_s = train["tokens"] / train["seconds"][clock]
    r_ti = train_tok_s / inf_tok_s  # training throughput / inference throughput

    k, n_ft, n_runs = args.k_adapters, args.n_ft, args.n_runs
    n_int = args.n_interleave or args.n_pool
    mean_tokens = real_tokens / len(encoded)
    # projected from this run's measured throughputs (pool and fine-tuning examples of the same mean length)
    t_score_proj = t_score[clock] / args.n_pool * n_int
    t_train_proj = n_runs * n_ft * mean_tokens / train_tok_s
    overhead_measured = t_score_proj / t_train_proj
    overhead_formula = (k + 1) * n_int * r_ti / (n_ft * n_runs)
    overhead_brief = (k + 1) * n_ft / (r_ti * n_int * n_runs)

    result = {
        "mode": "cpu", "model": str(model_path), "threads": torch.get_num_threads(), "clock": clock,
        "load_avg_1min": os.getloadavg()[0], "n_pool": args.n_pool, "k_adapters": k,
        "batch_size": args.batch_size, "lora_r": args.lora_r, "pool_tokens": real_tokens,
        "answer_tokens": int(fast["n_answer_tokens"].sum()),
        "batched_s": t_fast, "batched_load_s": t_load, "batched_score_s": t_score, "naive_s": t_naive,
        "speedup": speedup, "max_abs_diff": max_diff,
        "inference_tokens_per_s": inf_tok_s, "train_tokens_per_s": train_tok_s, "R_TI": r_ti,
        "n_FT": n_ft, "n_interleave": n_int, "n_runs": n_runs,
        "t_score_projected_s": t_score_proj, "t_train_projected_s": t_train_proj,
        "overhead_measured": overhead_measured, "overhead_formula": overhead_formula,
        "overhead_brief_formula": overhead_brief,
    }
    print(f"max |batched - naive| over NLLs and scores: {max_diff:.2e} (< 1e-4)")
    print(f"speed-up incl. model loads: wall {speedup['wall']:.2f}x, cpu time {speedup['cpu']:.2f}x "
          f"({torch.get_num_threads()} threads, 1-min load average {os.getloadavg()[0]:.1f})")
    print(f"throughput ({clock} clock): scoring {inf_tok_s:.0f} tok/s per pass, LoRA training {train_tok_s:.0f} tok/s, "
          f"R_TI = train/inference = {r_ti:.3f}")
    print(f"overhead with K={k}, n_FT={n_ft}, n_interleave={n_int}, n_runs={n_runs}:")
    print(f"  scoring n_interleave examples ({k + 1} passes): {t_score_proj:.1f}s; "
          f"n_runs fine-tunes on n_FT examples: {t_train_proj:.1f}s")
    print(f"  measured ratio                                         = {overhead_measured:.4f}")
    print(f"  (K+1) * n_interleave * R_TI / (n_FT * n_runs)          = {overhead_formula:.4f}")
    print(f"  as briefed: (K+1) * n_FT / (R_TI * n_interleave * n_runs) = {overhead_brief:.4g}"
          "  (does not reproduce the measured ratio)")
    if args.grid_domains:
        result.update(grid_benchmark(args, model_path, tmp, pool))
    return result


def grid_benchmark(args, model_path: Path, tmp: Path, pool: pd.DataFrame) -> dict:
    """Scores for every target of a D-domain grid: the pipeline's shared NLL table vs the naive reference
    once per target."""
    domains = [f"dom{k}" for k in range(args.grid_domains)]
    adapters = {d: str(make_random_adapter(model_path, tmp / f"grid-{d}", r=args.lora_r, alpha=2 * args.lora_r,
                                           seed=100 + k)) for k, d in enumerate(domains)}
    targets = {d: leave_one_out(domains, d) for d in domains}
    targets.update({f"opswap_t{t}": list(domains) for t in range(args.grid_opswap)})
    naive_passes = sum(len(a) + 1 for a in targets.values())

    sw = Stopwatch()
    model, tok = load_model(model_path, device="cpu"), load_tokenizer(model_path)
    nll = pool_nll(model, tok, pool, adapters, batch_size=args.batch_size, max_length=args.max_length)
    fast = {t: scores_from_nll(nll, names, pool) for t, names in targets.items()}
    t_fast = sw.read()
    del model
    print(f"grid, pipeline ({len(domains) + 1} passes, 1 load): wall {t_fast['wall']:.2f}s, cpu {t_fast['cpu']:.2f}s",
          flush=True)

    sw = Stopwatch()
    naive = {t: score_pool_naive(model_path, {n: adapters[n] for n in names}, pool, max_length=args.max_length)
             for t, names in targets.items()}
    t_naive = sw.read()
    print(f"grid, naive ({naive_passes} passes, {naive_passes} loads): wall {t_naive['wall']:.2f}s, "
          f"cpu {t_naive['cpu']:.2f}s", flush=True)

    max_diff = max(max_abs_diff(fast[t], naive[t], names) for t, names in targets.items())
    assert max_diff < 1e-4, f"grid: pipeline and naive scores differ by {max_diff:.3g}"
    speedup = {c: t_naive[c] / t_fast[c] for c in t_fast}
    print(f"grid: {len(targets)} targets ({args.grid_domains} EM domains, {args.grid_opswap} OpSwap tiers); "
          f"max |pipeline - naive| {max_diff:.2e}; speed-up wall {speedup['wall']:.2f}x, cpu time "
          f"{speedup['cpu']:.2f}x; forward passes {naive_passes} vs {len(domains) + 1}")
    return {"grid_domains": args.grid_domains, "grid_opswap": args.grid_opswap, "grid_targets": len(targets),
            "grid_passes_pipeline": len(domains) + 1, "grid_passes_naive": naive_passes,
            "grid_pipeline_s": t_fast, "grid_naive_s": t_naive, "grid_speedup": speedup,
            "grid_max_abs_diff": max_diff}


# --------------------------------------------------------------------------------------------------
# GPU: Qwen2.5-7B shape
# --------------------------------------------------------------------------------------------------

QWEN25_7B = dict(vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
                 num_attention_heads=28, num_key_value_heads=4, max_position_embeddings=32768,
                 rope_theta=1_000_000.0, rms_norm_eps=1e-6, tie_word_embeddings=False)


def matmul_tflops(device, n: int = 8192, reps: int = 20) -> float:
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(reps):
        a @ b
    _sync(device)
    return 2 * n ** 3 * reps / (time.perf_counter() - t0) / 1e12


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def qwen_model(divisor: int, device):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    shape = dict(QWEN25_7B)
    if divisor > 1:  # a scaled-down smoke-test shape (keeps head_dim = 128)
        shape.update(hidden_size=3584 // divisor // 128 * 128 or 128, intermediate_size=18944 // divisor,
                     num_hidden_layers=max(1, 28 // divisor), vocab_size=152064 // divisor)
        shape.update(num_attention_heads=shape["hidden_size"] // 128, num_key_value_heads=1)
    rope = {"rope_type": "default", "rope_theta": shape.pop("rope_theta")}
    cfg = Qwen2Config(**shape, rope_parameters=rope)
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device(device):
            model = Qwen2ForCausalLM(cfg)
    finally:
        torch.set_default_dtype(old)
    return model.eval(), cfg


def random_encoded(n: int, vocab: int, seed: int, prompt_range=(64, 384), answer_range=(64, 512)) -> list[Encoded]:
    """Token sequences with WildGuardMix-like prompt and answer lengths."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        p = int(rng.integers(*prompt_range))
        a = int(rng.integers(*answer_range))
        ids = rng.integers(10, vocab, p + a).tolist()
        out.append(Encoded(ids, [IGNORE_INDEX] * p + ids[p:]))
    return out


def gpu_benchmark(args) -> dict:
    from peft import get_peft_model

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type != "cuda" and args.qwen_shape_divisor == 1:
        raise SystemExit("--gpu-qwen7b-shape needs a CUDA GPU (use --qwen-shape-divisor N for a CPU smoke test)")
    mm = matmul_tflops(device, n=8192 if device.type == "cuda" else 1024, reps=20 if device.type == "cuda" else 3)
    print(f"bf16 matmul: {mm:.3g} TFLOP/s", flush=True)
    t0 = time.perf_counter()
    model, cfg = qwen_model(args.qwen_shape_divisor, device)
    print(f"random {'Qwen2.5-7B' if args.qwen_shape_divisor == 1 else 'scaled'} shape built in "
          f"{time.perf_counter() - t0:.1f}s", flush=True)
    tmp = Path(tempfile.mkdtemp(prefix="bench-qwen-"))
    adapters = {}
    for k in range(args.k_adapters):
        torch.manual_seed(k + 1)
        lcfg = LoraSettings(r=args.lora_r, alpha=2 * args.lora_r).to_peft()
        lcfg.init_lora_weights = False
        pm = get_peft_model(model, lcfg)
        pm.save_pretrained(str(tmp / f"mis{k}"))
        model = pm.unload()
        adapters[f"mis{k}"] = str(tmp / f"mis{k}")
    encoded = random_encoded(args.n_pool, cfg.vocab_size, args.seed)
    warm = encoded[: args.batch_size]
    score_encoded(model, warm, {"mis0": adapters["mis0"]}, pad_id=0, batch_size=args.batch_size)
    _sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    nll = score_encoded(model, encoded, adapters, pad_id=0, batch_size=args.batch_size)
    _sync(device)
    dt = time.perf_counter() - t0
    assert all(np.isfinite(v).all() for v in nll.values())

    passes = args.k_adapters + 1
    tokens = sum(len(e.input_ids) for e in encoded)
    answers = sum(e.n_answer_tokens for e in encoded)
    h, inter, layers, v = cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers, cfg.vocab_size
    kv = cfg.num_key_value_heads * (h // cfg.num_attention_heads)
    linear = layers * (2 * h * h + 2 * h * kv + 3 * h * inter)  # q,o + k,v + gate,up,down weights
    lora = layers * args.lora_r * ((h + h) * 2 + (h + kv) * 2 + (h + inter) * 3)
    attn = sum(4 * layers * h * (len(e.input_ids) + 1) / 2 * len(e.input_ids) for e in encoded)  # QK^T + AV, causal
    flops_pass = 2 * linear * tokens + attn + 2 * h * v * answers
    flops = passes * flops_pass + args.k_adapters * 2 * lora * tokens
    achieved = flops / dt / 1e12
    result = {
        "mode": "gpu-qwen7b-shape", "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
        "shape_divisor": args.qwen_shape_divisor, "n_pool": args.n_pool, "k_adapters": args.k_adapters,
        "batch_size": args.batch_size, "lora_r": args.lora_r, "pool_tokens": tokens, "answer_tokens": answers,
        "seconds": dt, "tokens_per_s_per_pass": passes * tokens / dt, "pool_examples_per_s": args.n_pool / dt,
        "achieved_tflops": achieved, "matmul_tflops": mm, "fraction_of_matmul": achieved / mm,
        "peak_mem_gib": torch.cuda.max_memory_allocated() / 2 ** 30 if device.type == "cuda" else None,
    }
    print(f"scored {args.n_pool} examples x {passes} passes ({tokens} tokens each pass) in {dt:.2f}s: "
          f"{passes * tokens / dt:.0f} tok/s; {achieved:.3g} TFLOP/s = {achieved / mm:.1%} of the bf16 matmul rate")
    return result


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=str(DEFAULT_MODEL), help="model folder (falls back to the tiny test model)")
    ap.add_argument("--n-pool", type=int, default=32, help="pool examples scored")
    ap.add_argument("--k-adapters", type=int, default=2, help="misaligned adapters K")
    ap.add_argument("--grid-domains", type=int, default=4,
                    help="EM domains of the grid comparison (each a target scored leave-one-out); 0 skips it")
    ap.add_argument("--grid-opswap", type=int, default=4, help="OpSwap tiers of the grid (scored with all domains)")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--max-length", type=int, default=1024)
    ap.add_argument("--lora-r", type=int, default=32)
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    ap.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                    help="clock for throughputs and overhead (cpu: process CPU time, for shared machines)")
    ap.add_argument("--train-steps", type=int, default=2, help="timed LoRA training steps for R_TI")
    ap.add_argument("--n-ft", type=int, default=6000, help="fine-tuning examples per run (overhead formula)")
    ap.add_argument("--n-interleave", type=int, default=None, help="pool size scored (default: --n-pool)")
    ap.add_argument("--n-runs", type=int, default=1, help="runs sharing one set of scores")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--gpu-qwen7b-shape", action="store_true")
    ap.add_argument("--qwen-shape-divisor", type=int, default=1, help="shrink the Qwen shape (smoke tests only)")
    ap.add_argument("--json-out", default=None)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    result = gpu_benchmark(args) if args.gpu_qwen7b_shape else cpu_benchmark(args)
    print(json.dumps(result, indent=2))
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
