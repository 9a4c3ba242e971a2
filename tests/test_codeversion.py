"""emguard.codeversion: the rule code hashes Snakemake reruns on."""

import ast
import os
import textwrap
from pathlib import Path

import pytest

from emguard import codeversion

ROOT = Path(__file__).resolve().parent.parent


def _located(tree):
    return [n for n in ast.walk(tree) if getattr(n, "end_lineno", None) is not None]


def test_segments_equal_ast_get_source_segment():
    text = (ROOT / "emguard" / "stages_rl.py").read_text()
    tree = ast.parse(text)
    # the top-level statements (what code_version hashes) and a share of every other node (the reference is slow)
    nodes = tree.body + _located(tree)[::7]
    assert len(nodes) > 200
    assert codeversion.source_segments(text, nodes) == [ast.get_source_segment(text, n) for n in nodes]


def test_segments_with_other_line_breaks_and_multibyte_text():
    text = 'x = "é→"\r\ndef f():\r    return "ü"  # ü\n\nclass C:\n    a = 1\n    b = (2,\n         3)'
    nodes = _located(ast.parse(text))
    assert codeversion.source_segments(text, nodes) == [ast.get_source_segment(text, n) for n in nodes]


def _project(root: Path, stages: str) -> Path:
    (root / "emguard").mkdir(parents=True, exist_ok=True)
    (root / "scripts").mkdir(exist_ok=True)
    for m in codeversion.SHARED_MODULES:
        (root / "emguard" / f"{m}.py").write_text(f"# {m}\n")
    (root / "emguard" / "likelihood.py").write_text("A = 1\n")
    (root / "emguard" / "stages.py").write_text(textwrap.dedent(stages))
    (root / "emguard" / "stages_rl.py").write_text("from emguard.stages import helper\n\n\ndef rl_stage():\n"
                                                   "    return helper()\n")
    (root / "scripts" / "a.py").write_text("from emguard.stages import stage_a\n")
    (root / "scripts" / "b.py").write_text("from emguard.stages import stage_b\n")
    (root / "scripts" / "rl.py").write_text("from emguard.stages_rl import rl_stage\n")
    return root


STAGES = """
    import math

    def helper():
        return 1

    def stage_a():
        return helper()

    def stage_b():
        return 2
"""


def _hashes(root: Path) -> dict[str, str]:
    return {s: codeversion.code_version(root, "likelihood", script=s) for s in ("a", "b", "rl")}


def test_a_stage_edit_changes_the_hashes_of_the_scripts_that_reach_it_only(tmp_path):
    root = _project(tmp_path, STAGES)
    before = _hashes(root)
    assert len(set(before.values())) == 3
    # stage_b edited: only b changes (the cache sees the edit: mtime and size)
    (root / "emguard" / "stages.py").write_text(textwrap.dedent(STAGES.replace("return 2", "return 22")))
    after = _hashes(root)
    assert after["b"] != before["b"] and after["a"] == before["a"] and after["rl"] == before["rl"]
    # helper edited: a and rl reach it (rl across modules), b does not
    (root / "emguard" / "stages.py").write_text(textwrap.dedent(STAGES.replace("return 1", "return 11")
                                                                .replace("return 2", "return 22")))
    again = _hashes(root)
    assert again["a"] != after["a"] and again["rl"] != after["rl"] and again["b"] == after["b"]
    # a top-level statement of a module reached, and a named module, change every script reaching them
    (root / "emguard" / "likelihood.py").write_text("A = 2\n")
    assert all(h != again[s] for s, h in _hashes(root).items())


def test_a_script_importing_no_stage_is_an_error(tmp_path):
    root = _project(tmp_path, STAGES)
    (root / "scripts" / "none.py").write_text("import os\n")
    with pytest.raises(ValueError, match="scripts/none.py imports nothing"):
        codeversion.code_version(root, script="none")


def test_a_named_package_hashes_every_module_of_it(tmp_path):
    """A module name that is a folder (``config``, ``judge``) hashes each of its ``.py`` files: editing any
    submodule, not only ``__init__.py``, reruns the rules that name the package."""
    root = _project(tmp_path, STAGES)
    pkg = root / "emguard" / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("from emguard.pkg.part import A\n")
    (pkg / "part.py").write_text("A = 1\n")
    before = codeversion.code_version(root, "pkg", script="a")
    (pkg / "part.py").write_text("A = 2\n")
    assert codeversion.code_version(root, "pkg", script="a") != before
