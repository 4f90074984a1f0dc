"""The package's import graph read from source, and the contracts the layout keeps (test helper).

Every `import` and `from ... import` statement counts, at any depth: an import inside a function
(a lazy import) is as much a dependency as one at the top of a module. Nothing is imported to
build the graph, so a module whose extra is not installed is read like any other.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

# Libraries the pure core never reaches, directly or through another module of the package.
FORBIDDEN_IN_CORE = (
    "confluent_kafka",
    "boto3",
    "botocore",
    "torch",
    "transformers",
    "lmdeploy",
    "httpx",
    "sqlalchemy",
    "structlog",
)
# Modules of the package the pure core never reaches either: the settings object is built at
# the edge and passed down as plain values.
FORBIDDEN_PACKAGE_MODULES = ("settings", "logs")


@dataclass
class Graph:
    """One package's modules, the package modules each imports, and the outside names it imports."""

    package: str
    files: dict[str, Path] = field(default_factory=dict)
    internal: dict[str, set[str]] = field(default_factory=dict)
    external: dict[str, set[str]] = field(default_factory=dict)

    def reach(self, start: str) -> set[str]:
        """Every package module `start` imports, directly or through others (itself included)."""
        seen = {start}
        todo = [start]
        while todo:
            for nxt in self.internal[todo.pop()]:
                if nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
        return seen

    def path_to(self, start: str, goal: str) -> list[str]:
        """The shortest import chain from `start` to `goal` (for readable failures)."""
        previous: dict[str, str] = {}
        frontier = [start]
        seen = {start}
        while frontier:
            following = []
            for module in frontier:
                for nxt in sorted(self.internal[module]):
                    if nxt in seen:
                        continue
                    seen.add(nxt)
                    previous[nxt] = module
                    if nxt == goal:
                        chain = [goal]
                        while chain[-1] != start:
                            chain.append(previous[chain[-1]])
                        return chain[::-1]
                    following.append(nxt)
            frontier = following
        return []


def read_graph(root: Path, package: str) -> Graph:
    """The import graph of the package whose top folder is `root / package`."""
    graph = Graph(package)
    for path in sorted((root / package).rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        graph.files[".".join(parts)] = path
    for name, path in graph.files.items():
        is_package = path.name == "__init__.py"
        graph.internal[name], graph.external[name] = set(), set()
        for target in _imports(path, name, is_package):
            top = target.split(".")[0]
            if top == package:
                owner = _owner(target, graph.files)
                if owner is not None and owner != name:
                    graph.internal[name].add(owner)
            else:
                graph.external[name].add(top)
    return graph


def cycles(graph: Graph) -> list[list[str]]:
    """Groups of modules that import each other in a circle (strongly connected components)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.internal[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1 or v in graph.internal[v]:
                found.append(sorted(group))

    for module in sorted(graph.internal):
        if module not in index:
            visit(module)
    return found


def core_violations(graph: Graph, core: Iterable[str]) -> list[str]:
    """Each forbidden library or module a core module reaches, with the chain that reaches it."""
    problems = []
    forbidden_modules = {f"{graph.package}.{m}" for m in FORBIDDEN_PACKAGE_MODULES}
    for start in _expand(graph, core):
        for module in sorted(graph.reach(start)):
            chain = " -> ".join(graph.path_to(start, module) or [start])
            if module in forbidden_modules:
                problems.append(f"{start} imports {module} ({chain})")
            for library in sorted(graph.external[module] & set(FORBIDDEN_IN_CORE)):
                problems.append(f"{start} imports {library} ({chain} -> {library})")
    return problems


def confined_violations(graph: Graph, confined: str, allowed: Iterable[str]) -> list[str]:
    """Modules outside `allowed` that import anything under `confined` directly."""
    inside = _prefix(graph.package, confined)
    permitted = tuple(_prefix(graph.package, a) for a in allowed)
    return [
        f"{module} imports {target}"
        for module in sorted(graph.internal)
        if not _under(module, permitted)
        for target in sorted(graph.internal[module])
        if _under(target, (inside,))
    ]


def _imports(path: Path, name: str, is_package: bool) -> Iterator[str]:
    package = name if is_package else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            # `from pkg import mod` depends on pkg.mod when that is a module; else on pkg.
            yield from (f"{base}.{alias.name}" for alias in node.names)


def _owner(target: str, files: dict[str, Path]) -> str | None:
    """The module a dotted import name lands in: the longest prefix that is a module."""
    parts = target.split(".")
    for end in range(len(parts), 0, -1):
        candidate = ".".join(parts[:end])
        if candidate in files:
            return candidate
    return None


def _expand(graph: Graph, names: Iterable[str]) -> list[str]:
    """Core entries are modules or whole packages (every module under them)."""
    out = []
    for entry in names:
        full = _prefix(graph.package, entry)
        matched = [m for m in sorted(graph.files) if _under(m, (full,))]
        if not matched:
            raise ValueError(f"core entry {entry!r} names no module of {graph.package}")
        out.extend(matched)
    return out


def _prefix(package: str, relative: str) -> str:
    return f"{package}.{relative}" if relative else package


def _under(module: str, prefixes: tuple[str, ...]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)
