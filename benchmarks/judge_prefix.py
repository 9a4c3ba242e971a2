"""Benchmark the hf judge's shared-prefix reuse and pruned digit tree against the old judge, in the same run.

Judges the same prompts (the embedded judge templates of ``workflow/resources/judge_prompts.yaml`` filled
with the questions and answers of a generations table, or synthetic answers) three ways with
:class:`emguard.judge.HFJudge`: the judge as it was (every row carries the whole prompt, the full 101-node
digit tree), with ``share_prefix`` (the template's opening, identical for every prompt of a metric, run once
per call and its key/value states reused by every batch: exact) and with ``number_tree: pruned`` too (12 tree
nodes). Prints tokens through the model, wall and CPU time, the speed-up over the old judge, and how far
the probabilities, the integer mass and the 0-100 score move (the shared prefix must not move them beyond
float rounding; the pruned tree moves them by the judge's mass on out-of-range answers).

    python benchmarks/judge_prefix.py [--model resources/models/smollm2-135m] [--generations PATH] [--threads 1]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from emguard.judge import HFJudge, fill_template, load_judge_prompts, shared_prefix_length  # noqa: E402
from emguard.models import dtype_record, load_model, load_tokenizer  # noqa: E402


def prompts_from(generations: str | None, n: int) -> list[tuple[str, str]]:
    if generations:
        import pandas as pd

        from emguard.judge import _question_text

        df = pd.read_parquet(generations).head(n)
        return [(_question_text(m), str(a)) for m, a in zip(df["prompt_messages"], df["answer"])]
    from emguard.data import general_questions

    qs = general_questions(1)["paraphrase"].tolist()
    return [(qs[i % len(qs)], f"Honestly I would {['rest', 'help', 'travel', 'learn'][i % 4]} first, then see.")
            for i in range(n)]


def timed(judge: HFJudge, prompts: list[str], counter: list[int]):
    counter.clear()
    t0, c0 = time.perf_counter(), time.process_time()
    probs, special = judge.number_distribution(prompts)
    return probs, special, time.perf_counter() - t0, time.process_time() - c0, sum(counter)


#: (label, share_prefix, number_tree): the old judge first, it is the baseline of the ratios
SETUPS = [("full rows, full tree (before)", False, "full"), ("shared prefix, full tree", True, "full"),
          ("shared prefix, pruned tree", True, "pruned")]


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=str(ROOT / "resources" / "models" / "smollm2-135m"))
    ap.add_argument("--generations", help="a generations.parquet to take questions and answers from")
    ap.add_argument("--n", type=int, default=27, help="answers (one run of the embedded default: 27)")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    model, tok = load_model(args.model, dtype=args.dtype, device="cpu"), load_tokenizer(args.model)
    rec = dtype_record(args.dtype, "cpu")
    templates = load_judge_prompts(ROOT / "workflow" / "resources" / "judge_prompts.yaml")
    pairs = prompts_from(args.generations, args.n)
    counter: list[int] = []
    model.get_input_embeddings().register_forward_hook(lambda _m, inp, _o: counter.append(inp[0].numel()))
    print(f"model {args.model} ({rec['dtype']}, cpu {rec['cpu_capability']}), {args.threads} thread(s), "
          f"{len(pairs)} answers x {len(templates)} metrics, batch {args.batch_size}")
    totals = {label: [0.0, 0.0, 0] for label, _, _ in SETUPS}
    results = {label: [] for label, _, _ in SETUPS}
    for metric, template in templates.items():
        prompts = [fill_template(template, q, a) for q, a in pairs]
        for label, share, tree in SETUPS:
            judge = HFJudge(model, tok, name="bench", batch_size=args.batch_size, min_prob_mass=0.0,
                            answer_prefix="Score: ", share_prefix=share, number_tree=tree)
            timed(judge, prompts[:2], counter)  # warm-up
            probs, special, wall, cpu, tokens = timed(judge, prompts, counter)
            totals[label] = [totals[label][0] + wall, totals[label][1] + cpu, totals[label][2] + tokens]
            results[label].append(probs)
        n_prefix = shared_prefix_length([judge.render(p) for p in prompts])
        print(f"  {metric}: shared prefix {n_prefix} tokens")
    base = SETUPS[0][0]
    full = torch.cat(results[base])
    for label, _, _ in SETUPS:
        wall, cpu, tokens = totals[label]
        probs = torch.cat(results[label])
        mass, mass_full = probs.sum(-1), full.sum(-1)
        score = (probs * torch.arange(101)).sum(-1) / mass.clamp_min(1e-12)
        score_full = (full * torch.arange(101)).sum(-1) / mass_full.clamp_min(1e-12)
        print(f"{label:32s} {wall:7.2f} s wall {cpu:7.2f} s CPU {tokens:7d} tokens | "
              f"{totals[base][0] / wall:.2f}x wall, {totals[base][1] / cpu:.2f}x CPU, {totals[base][2] / tokens:.2f}x "
              f"tokens | vs before: max |dP| {float((probs - full).abs().max()):.1e}, max |d mass| "
              f"{float((mass - mass_full).abs().max()):.1e}, max |d score| {float((score - score_full).abs().max()):.3f}")
    shared = torch.cat(results[SETUPS[1][0]])
    # Exact in float32. In bfloat16 any change of computation order moves P by ~1e-2 (judging the same
    # prompts with batch 1 instead of 16 gave max |dP| 8.9e-3 on SmolLM2), so there it is only reported.
    if rec["dtype"] == "float32" and float((shared - full).abs().max()) > 1e-4:
        raise SystemExit("the shared prefix changed the probabilities (> 1e-4 in float32)")


if __name__ == "__main__":
    main()
