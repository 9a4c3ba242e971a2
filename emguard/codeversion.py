"""The code a Snakemake rule runs, as a hash (its ``code`` param): editing that code reruns the rule's jobs and
everything below them, and nothing else.

A rule's code is the emguard modules it names (``"likelihood"``, a package such as ``"judge"``, a package module
such as ``"training/sft"``), the shared ``io`` / ``schemas`` / ``errors``, and, of the stage modules (every module
of the package ``emguard/stages/``, found by listing the folder, so a new file needs no edit here), only the stage
functions its script imports and the ones those reach by name, across the modules, with the top-level statements
(imports, constants) of every stage module reached. So adding or editing one stage does not rerun the others. The
package's ``__init__.py`` only re-exports: it defines no stage, so its imports are hashed by no rule, and adding a
stage's re-export reruns nothing.

The stage modules are parsed once per process (``workflow/rules/common.smk`` asks for ~30 rules' hashes each time
Snakemake reads the Snakefile, in every dry run and every job), and each node's source is cut from lines split
once (:func:`source_segments`): ``ast.get_source_segment`` re-splits the whole file on every call, which made
reading the Snakefile take ~20 s of CPU (``benchmarks/code_version.py``).
"""

from __future__ import annotations

import ast
import functools
import hashlib
import os
import re
from pathlib import Path
from typing import Mapping, Sequence

#: the package of the stage modules, ``emguard/stages/``
STAGE_PACKAGE = "stages"
SHARED_MODULES = ("io", "schemas", "errors")


def source_segments(text: str, nodes: Sequence[ast.AST]) -> list[str]:
    """``ast.get_source_segment(text, node)`` for every node, the text split into lines once (the same line
    breaks as ``ast``: ``\\r\\n``, ``\\r``, ``\\n``; offsets are UTF-8 byte columns as ``ast`` gives them)."""
    lines, start = [], 0
    for m in re.finditer(r"\r\n|\r|\n", text):
        lines.append(text[start:m.end()])
        start = m.end()
    if start < len(text):
        lines.append(text[start:])
    out = []
    for n in nodes:
        first, last = lines[n.lineno - 1].encode(), lines[n.end_lineno - 1].encode()
        if n.lineno == n.end_lineno:
            out.append(first[n.col_offset:n.end_col_offset].decode())
        else:
            out.append(first[n.col_offset:].decode() + "".join(lines[n.lineno:n.end_lineno - 1])
                       + last[:n.end_col_offset].decode())
    return out


@functools.cache
def _stage_module(path: Path, module: str, stamp: tuple[int, int]) -> tuple[list[str], dict[str, tuple]]:
    """A stage module's top-level statements other than definitions (their source), and ``name -> (module, node,
    source)`` for its functions and classes (the first definition of a name wins). ``stamp`` (mtime, size) keys
    the cache, so an edited file is read again."""
    text = path.read_text()
    body = ast.parse(text).body
    is_def = [isinstance(n, (ast.FunctionDef, ast.ClassDef)) for n in body]
    sources = source_segments(text, body)
    heads = [src for src, d in zip(sources, is_def) if not d]
    defs: dict[str, tuple[str, ast.AST, str]] = {}
    for n, src, d in zip(body, sources, is_def):
        if d:
            defs.setdefault(n.name, (module, n, src))
    return heads, defs


def stage_modules(basedir: str | os.PathLike) -> dict[str, Path]:
    """The stage modules, ``{dotted name under emguard: path}``: every ``.py`` of ``emguard/stages/``, sorted by file
    name (``stages`` for the package's ``__init__.py``, ``stages.<file>`` for the others)."""
    folder = Path(basedir) / "emguard" / STAGE_PACKAGE
    paths = sorted(folder.glob("*.py"))
    if not paths:
        raise ValueError(f"{folder}: no stage modules")
    return {STAGE_PACKAGE if p.stem == "__init__" else f"{STAGE_PACKAGE}.{p.stem}": p for p in paths}


def stage_sources(basedir: str | os.PathLike, script: str, modules: Mapping[str, Path] | None = None) -> str:
    """The stage code ``scripts/<script>.py`` runs: the functions it imports from the stage modules (``modules``:
    ``{name: path}``, by default :func:`stage_modules`), every stage function they reach by name (across modules:
    an RL stage calling ``build_method`` of ``emguard.stages.train`` reaches it), and the top-level statements of
    every module reached, joined in a fixed order. The walk goes by name, so a name defined in two stage modules
    is an error (an edit to one of them could otherwise go unhashed)."""
    root = Path(basedir)
    modules = stage_modules(root) if modules is None else modules
    heads, defs = {}, {}
    for m, path in modules.items():
        st = path.stat()
        heads[m], module_defs = _stage_module(path, m, (st.st_mtime_ns, st.st_size))
        for name, d in module_defs.items():
            if name in defs:
                raise ValueError(f"{name} is defined in both emguard.{defs[name][0]} and emguard.{m}: the stage "
                                 "modules' code hashes follow names, so each name is defined once")
            defs[name] = d
    return reached_sources(root / "scripts" / f"{script}.py", heads, defs, list(modules))


def reached_sources(script_path: Path, heads: dict[str, list[str]], defs: dict[str, tuple], modules: Sequence[str]
                    ) -> str:
    """:func:`stage_sources` given the stage modules' top-level statements (``heads``: module -> sources) and
    definitions (``defs``: name -> (module, node, source)): the walk from the script's imports, by name."""
    entry = ast.parse(script_path.read_text())
    wanted = {f"emguard.{m}" for m in modules}
    todo = [a.name for n in ast.walk(entry) if isinstance(n, ast.ImportFrom) and n.module in wanted for a in n.names]
    if not todo:
        raise ValueError(f"scripts/{script_path.name} imports nothing from the stage modules "
                         f"({', '.join(sorted(wanted))})")
    seen = {}
    while todo:
        name = todo.pop()
        if name in seen or name not in defs:
            continue
        seen[name] = defs[name]
        todo += [n.id for n in ast.walk(defs[name][1]) if isinstance(n, ast.Name)]
    used = {m for m, _, _ in seen.values()}
    return "\n".join([h for m in modules if m in used for h in heads[m]] + [seen[n][2] for n in sorted(seen)])


def code_version(basedir: str | os.PathLike, *modules: str, script: str) -> str:
    """16 hex digits of the SHA-256 of a rule's code (module docstring): its script's stage sources, then the
    shared modules and ``modules`` (a single file ``emguard/<m>.py``, else every ``.py`` of the package
    ``emguard/<m>/``, sorted)."""
    root = Path(basedir) / "emguard"
    h = hashlib.sha256(stage_sources(basedir, script).encode())
    for m in SHARED_MODULES + modules:
        single = root / f"{m}.py"
        for f in [single] if single.exists() else sorted((root / m).glob("*.py")):
            h.update(f.read_bytes())
    return h.hexdigest()[:16]
