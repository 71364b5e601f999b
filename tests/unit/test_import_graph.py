"""The library's import graph, read from the source with ``ast`` (every import, including those
inside functions): no module of tempo_jax imports the repository's experiments, the entry point
tempo_jax.cli is a leaf, and there are no import cycles."""

from __future__ import annotations

import ast
from pathlib import Path
from repo import ROOT as REPO_ROOT  # noqa: E402

PKG = REPO_ROOT / "tempo_jax"


def module_name(path: Path, root: Path) -> str:
    parts = path.relative_to(root.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph(root: Path) -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    """(module -> the package's modules it imports, module -> every imported name). ``from a import
    b`` counts as importing module ``a.b`` when that is a module; importing a module's own parent
    package is not an edge (Python imports parents first anyway)."""
    files = {module_name(p, root): p for p in root.rglob("*.py")}
    graph, names = {}, {}
    for mod, path in files.items():
        is_pkg = path.name == "__init__.py"
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                deps.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative import
                    here = mod.split(".") if is_pkg else mod.split(".")[:-1]
                    base = ".".join(here[:len(here) - node.level + 1] + ([base] if base else []))
                subs = [f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in files]
                deps.update(subs)
                if len(subs) < len(node.names):
                    deps.add(base)
        names[mod] = deps
        graph[mod] = {d for d in deps if d in files and d != mod and not mod.startswith(d + ".")}
    return graph, names


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_library_never_imports_the_experiments():
    _, names = import_graph(PKG)
    bad = {m: sorted(n for n in ns if n == "experiments" or n.startswith("experiments."))
           for m, ns in names.items()}
    assert {m: n for m, n in bad.items() if n} == {}


def test_command_line_module_is_a_leaf():
    """The model loader and the help formatter the commands share live in loading.py and cli_help.py."""
    _, names = import_graph(PKG)
    assert sorted(m for m, ns in names.items() if "tempo_jax.cli" in ns and m != "tempo_jax.cli") == []


def test_no_import_cycles():
    graph, _ = import_graph(PKG)
    assert len(graph) > 50  # the walk saw the package
    assert cycles(graph) == []


def test_cycle_finder_finds_a_planted_cycle(tmp_path):
    pkg = tmp_path / "toy"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("from toy.sub.b import f\n")
    (pkg / "a.py").write_text("def g():\n    from toy.sub import b\n")
    (pkg / "sub" / "b.py").write_text("from .. import c\n")
    (pkg / "c.py").write_text("import toy.a\n")
    graph, _ = import_graph(pkg)
    assert graph["toy.sub.b"] == {"toy.c"} and graph["toy.a"] == {"toy.sub.b"}
    assert cycles(graph) == [["toy.a", "toy.c", "toy.sub.b"]]
