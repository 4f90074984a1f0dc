"""The layout keeps its shape: no import cycles, a pure core, dev/ out of the product, small files.

The graph is read from source (tests/import_contract.py), lazy imports included.
"""

from __future__ import annotations

import ast
import re
import textwrap
from pathlib import Path

import pytest

from tests.import_contract import (
    FORBIDDEN_IN_CORE,
    Graph,
    confined_violations,
    core_violations,
    cycles,
    read_graph,
)

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "moderator"

# The pure core: plain typed functions and dataclasses, testable without any server.
CORE = (
    "errors",
    "masking",
    "events",
    "ingest.tracker",
    "ingest.flow",
    "engine.window",
    "policy.document",
    "policy.keys",
    "policy.load",
    "policy.model",
    "policy.resolve",
    "policy.prompt",
    "policy.compiled",
    "policy.decide",
    "policy.diff",
    "policy.reach",
    "explain",
    "pipeline.assemble",
    "emit.records",
    "audit.dsa",
    "replay.request",
    "replay.compare",
    "replay.report",
    "replay.tables",
    "replay.markdown",
    "training.metrics",
    "training.dataset",
    "training.manifest",
    "training.augment",
    "training.build",
)
# Development-only code (the embedded stack, test servers, tiny checkpoints): only the command
# line and dev/ itself may import it.
DEV = "dev"
DEV_IMPORTERS = ("cli", "dev")
MAX_LINES = 400
LONG_ALLOWED = {"moderator/settings.py"}  # declarative: one field per setting, with its docs


@pytest.fixture(scope="module")
def graph() -> Graph:
    return read_graph(ROOT, PACKAGE)


def test_no_import_cycles(graph: Graph) -> None:
    assert cycles(graph) == []


def test_the_core_imports_no_io_library_nor_the_settings(graph: Graph) -> None:
    assert core_violations(graph, CORE) == []


def test_product_code_never_imports_dev(graph: Graph) -> None:
    assert confined_violations(graph, DEV, DEV_IMPORTERS) == []


def test_nothing_outside_the_command_line_imports_it(graph: Graph) -> None:
    assert confined_violations(graph, "cli", ("cli",)) == []


def test_package_inits_import_nothing() -> None:
    """Importing a module runs its parents' __init__; empty ones keep the read graph complete."""
    offenders = [
        str(path.relative_to(ROOT))
        for path in sorted((ROOT / PACKAGE).rglob("__init__.py"))
        if any(
            isinstance(node, ast.Import)
            or (isinstance(node, ast.ImportFrom) and node.module != "__future__")
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
        )
    ]
    assert offenders == []


def test_modules_stay_small() -> None:
    long = {
        str(path.relative_to(ROOT)): n
        for path in sorted((ROOT / PACKAGE).rglob("*.py"))
        if (n := len(path.read_text(encoding="utf-8").splitlines())) > MAX_LINES
    }
    assert {p: n for p, n in long.items() if p not in LONG_ALLOWED} == {}


def test_every_package_folder_has_an_init_with_a_docstring() -> None:
    missing = [
        str(folder.relative_to(ROOT))
        for folder in sorted(p for p in (ROOT / PACKAGE).rglob("*") if p.is_dir())
        if any(folder.glob("*.py"))
        and not (
            (folder / "__init__.py").is_file()
            and ast.get_docstring(ast.parse((folder / "__init__.py").read_text(encoding="utf-8")))
        )
    ]
    assert missing == []


def test_files_named_in_the_docs_exist() -> None:
    named = re.compile(r"`((?:moderator|tests|integration|bench)/[\w./-]+)`")
    stale = [
        f"{doc.relative_to(ROOT)}: {target}"
        for doc in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
        for target in named.findall(doc.read_text(encoding="utf-8"))
        if "*" not in target and not (ROOT / target.rstrip("/")).exists()
    ]
    assert stale == []


# -- the checks themselves, run on throwaway packages --------------------------------------------


def _package(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / "pkg" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text), encoding="utf-8")
    return root


@pytest.mark.parametrize("library", FORBIDDEN_IN_CORE)
def test_a_core_module_importing_an_io_library_is_caught(tmp_path: Path, library: str) -> None:
    root = _package(
        tmp_path,
        {
            "__init__.py": '"""p"""\n',
            "core.py": "from pkg import helper\n",
            "helper.py": f"def f():\n    import {library}\n",
        },
    )
    problems = core_violations(read_graph(root, "pkg"), ["core"])
    assert problems == [f"pkg.core imports {library} (pkg.core -> pkg.helper -> {library})"]


def test_a_core_module_reading_the_settings_is_caught(tmp_path: Path) -> None:
    root = _package(
        tmp_path,
        {
            "__init__.py": "",
            "settings.py": "",
            "core/__init__.py": "",
            "core/a.py": "from .. import settings\n",
        },
    )
    assert core_violations(read_graph(root, "pkg"), ["core"]) == [
        "pkg.core.a imports pkg.settings (pkg.core.a -> pkg.settings)"
    ]


def test_a_lazy_import_cycle_is_caught(tmp_path: Path) -> None:
    root = _package(
        tmp_path,
        {
            "__init__.py": "",
            "a.py": "from pkg.b import g\n",
            "b.py": "def g():\n    from pkg import a\n",
            "c.py": "import pkg.a\n",
        },
    )
    assert cycles(read_graph(root, "pkg")) == [["pkg.a", "pkg.b"]]


def test_product_code_importing_dev_is_caught(tmp_path: Path) -> None:
    root = _package(
        tmp_path,
        {
            "__init__.py": "",
            "dev/__init__.py": "",
            "dev/tool.py": "",
            "cli/__init__.py": "",
            "cli/cmd.py": "from pkg.dev import tool\n",
            "engine.py": "def f():\n    from pkg.dev.tool import x\n",
        },
    )
    assert confined_violations(read_graph(root, "pkg"), "dev", ["cli", "dev"]) == [
        "pkg.engine imports pkg.dev.tool"
    ]
