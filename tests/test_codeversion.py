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
    text = (ROOT / "emguard" / "stages" / "rl.py").read_text()
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
    """emguard/stages/ with two stage modules (``core``; ``rl``, which calls core's ``helper``) re-exported by the
    package, and scripts importing from the package or from one of its modules."""
    (root / "emguard" / "stages").mkdir(parents=True, exist_ok=True)
    (root / "scripts").mkdir(exist_ok=True)
    for m in codeversion.SHARED_MODULES:
        (root / "emguard" / f"{m}.py").write_text(f"# {m}\n")
    (root / "emguard" / "likelihood.py").write_text("A = 1\n")
    (root / "emguard" / "stages" / "__init__.py").write_text(
        "from emguard.stages.core import helper, stage_a, stage_b\nfrom emguard.stages.rl import rl_stage\n")
    (root / "emguard" / "stages" / "core.py").write_text(textwrap.dedent(stages))
    (root / "emguard" / "stages" / "rl.py").write_text("from emguard.stages.core import helper\n\n\ndef rl_stage():\n"
                                                       "    return helper()\n")
    (root / "scripts" / "a.py").write_text("from emguard.stages import stage_a\n")
    (root / "scripts" / "b.py").write_text("from emguard.stages import stage_b\n")
    (root / "scripts" / "rl.py").write_text("from emguard.stages.rl import rl_stage\n")
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
    (root / "emguard" / "stages" / "core.py").write_text(textwrap.dedent(STAGES.replace("return 2", "return 22")))
    after = _hashes(root)
    assert after["b"] != before["b"] and after["a"] == before["a"] and after["rl"] == before["rl"]
    # helper edited: a and rl reach it (rl across modules), b does not
    (root / "emguard" / "stages" / "core.py").write_text(textwrap.dedent(STAGES.replace("return 1", "return 11")
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


def test_a_new_stage_module_is_found_and_reruns_nothing_else(tmp_path):
    """Every file of emguard/stages/ is a stage module: one added (with its re-export) needs no edit in
    codeversion, its script reaches its stage and the helper it imports from another module, and no other
    script's hash changes (the package's __init__ defines no stage: its imports are no rule's code)."""
    root = _project(tmp_path, STAGES)
    before = _hashes(root)
    (root / "emguard" / "stages" / "extra.py").write_text("from emguard.stages.core import helper\n\n\n"
                                                          "def stage_c():\n    return helper() + 3\n")
    init = root / "emguard" / "stages" / "__init__.py"
    init.write_text(init.read_text() + "from emguard.stages.extra import stage_c\n")
    (root / "scripts" / "c.py").write_text("from emguard.stages import stage_c\n")
    assert list(codeversion.stage_modules(root)) == ["stages", "stages.core", "stages.extra", "stages.rl"]
    assert _hashes(root) == before
    text = codeversion.stage_sources(root, "c")
    assert "def stage_c():" in text and "def helper():" in text and "import math" in text
    assert "def stage_a" not in text and "rl_stage" not in text


def test_a_name_defined_in_two_stage_modules_is_an_error(tmp_path):
    root = _project(tmp_path, STAGES)
    (root / "emguard" / "stages" / "other.py").write_text("def helper():\n    return 3\n")
    with pytest.raises(ValueError, match="helper is defined in both emguard.stages.core and emguard.stages.other"):
        codeversion.code_version(root, script="a")


def test_every_script_reaches_the_stage_functions_it_imports():
    """On the project itself: every script that imports from emguard.stages gets a hash, and its stage sources
    hold each function it imports and what those call (probe_nll's: probe_nll_stage, _probe_table,
    _inference_model), not the stages it does not reach."""
    modules = codeversion.stage_modules(ROOT)
    wanted = {f"emguard.{m}" for m in modules}
    defined = {n.name for path in modules.values() for n in ast.parse(path.read_text()).body
               if isinstance(n, ast.FunctionDef)}
    checked = 0
    for path in sorted((ROOT / "scripts").glob("*.py")):
        names = [a.name for n in ast.walk(ast.parse(path.read_text()))
                 if isinstance(n, ast.ImportFrom) and n.module in wanted for a in n.names]
        if not names:
            continue
        text = codeversion.stage_sources(ROOT, path.stem)
        assert len(codeversion.code_version(ROOT, script=path.stem)) == 16
        for name in names:
            assert name in defined, f"scripts/{path.name} imports {name}, which no stage module defines"
            assert f"def {name}(" in text, f"scripts/{path.name}: {name} is not in its stage sources"
        checked += 1
    assert checked >= 30
    probe = codeversion.stage_sources(ROOT, "probe_nll")
    assert all(f"def {f}(" in probe for f in ("probe_nll_stage", "_probe_table", "_inference_model", "run_stage"))
    assert "def report(" not in probe and "def train_grpo_run(" not in probe
