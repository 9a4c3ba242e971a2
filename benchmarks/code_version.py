"""What reading the Snakefile costs in rule code hashes: every rule's ``code`` param (emguard.codeversion), computed
the way it was before (``ast.get_source_segment`` per top-level node of each stage module, each module parsed on
every call) and as it is now (lines split once, each module parsed once), in the same process.

    python benchmarks/code_version.py [--repeats N]

Prints both times for one pass over every script (as ``workflow/rules/common.smk`` does each time Snakemake reads
the Snakefile: in every dry run, every ``snakemake`` call of the tests, every cluster job), the ratio, and whether
the hashed text is identical (it must be: a different text would rerun every job of existing results).
"""

from __future__ import annotations

import argparse
import ast
import time
from pathlib import Path

from emguard import codeversion

ROOT = Path(__file__).resolve().parent.parent


def stage_sources_before(script: str, modules=None) -> str:
    """The earlier way to collect the stage modules' sources, kept here as the baseline: each module parsed on every
    call, each node cut with ``ast.get_source_segment`` (which splits the whole file again); the walk from the
    script's imports is the library's (:func:`emguard.codeversion.reached_sources`). ``modules``: ``{name: path}``,
    by default every module of ``emguard/stages/`` (:func:`emguard.codeversion.stage_modules`)."""
    modules = codeversion.stage_modules(ROOT) if modules is None else modules
    heads, defs = {}, {}
    for m, path in modules.items():
        text = path.read_text()
        body = ast.parse(text).body
        heads[m] = [ast.get_source_segment(text, n) for n in body if not isinstance(n, (ast.FunctionDef, ast.ClassDef))]
        for n in body:
            if isinstance(n, (ast.FunctionDef, ast.ClassDef)):
                defs.setdefault(n.name, (m, n, ast.get_source_segment(text, n)))
    return codeversion.reached_sources(ROOT / "scripts" / f"{script}.py", heads, defs, list(modules))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=1)
    args = ap.parse_args()
    wanted = {f"emguard.{m}" for m in codeversion.stage_modules(ROOT)}
    scripts = sorted(p.stem for p in (ROOT / "scripts").glob("*.py")
                     if any(isinstance(n, ast.ImportFrom) and n.module in wanted for n in ast.walk(ast.parse(p.read_text()))))
    times = {}
    for label, fn in (("before", stage_sources_before), ("now", lambda s: codeversion.stage_sources(ROOT, s))):
        best = float("inf")
        for _ in range(args.repeats):
            codeversion._stage_module.cache_clear()  # a fresh process: Snakemake reads the Snakefile once per call
            t = time.perf_counter()
            texts = [fn(s) for s in scripts]
            best = min(best, time.perf_counter() - t)
        times[label] = (best, texts)
    same = times["before"][1] == times["now"][1]
    print(f"{len(scripts)} scripts' stage sources (one Snakefile read)")
    print(f"  before: {times['before'][0]:.2f} s   now: {times['now'][0]:.3f} s   "
          f"ratio {times['before'][0] / times['now'][0]:.0f}x   identical text: {same}")


if __name__ == "__main__":
    main()
