"""The package's layering, read from the source (AST, nothing imported): the CLI is the edge and
nothing imports it (``demo`` included), no module reaches into another's private names, and
rendering (rich tables/progress/markup, HTML) lives in :mod:`raddiag.views` only; the CLI builds
its two Console objects and imports views inside its commands, so ``raddiag --help`` loads none."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "platform" / "raddiag"

#: HTML markup in string literals: a template.
HTML_MARKERS = ("<html", "<!doctype", "<table", "<tr>", "<td", "<img ", "<style")


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(path): ast.parse(path.read_text(), str(path)) for path in sorted(PACKAGE.rglob("*.py"))}


def _is_package(name: str) -> bool:
    return name in MODULES and (PACKAGE.parent / name.replace(".", "/") / "__init__.py").exists()


def _absolute(module: str, node: ast.ImportFrom) -> str:
    """The absolute module an ``import from`` names (relative imports resolved)."""
    if not node.level:
        return node.module or ""
    base = module.split(".")
    base = base[: len(base) - node.level + (1 if _is_package(module) else 0)]
    return ".".join(base + ([node.module] if node.module else []))


def _runtime_nodes(tree: ast.AST) -> Iterator[ast.AST]:
    """Every node except those under ``if TYPE_CHECKING:`` (type-only imports load nothing)."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            yield from (n for child in node.orelse for n in [child, *_runtime_nodes(child)])
            continue
        yield node
        yield from _runtime_nodes(node)


def _imports(module: str) -> Iterator[tuple[str, str | None, ast.AST]]:
    """(imported module, imported name or None, node) for every run-time import of ``module``."""
    for node in _runtime_nodes(MODULES[module]):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, None, node
        elif isinstance(node, ast.ImportFrom):
            source = _absolute(module, node)
            for alias in node.names:
                yield source, alias.name, node


def _imported_modules(module: str) -> set[str]:
    """The raddiag modules ``module`` imports (``from raddiag import cli`` counts as raddiag.cli)."""
    out = set()
    for source, name, _ in _imports(module):
        if name and f"{source}.{name}" in MODULES:
            out.add(f"{source}.{name}")
        elif source in MODULES:
            out.add(source)
    return out


def test_the_modules_are_found() -> None:
    assert {"raddiag.cli", "raddiag.demo", "raddiag.metrics", "raddiag.views.console", "raddiag.views.html"} <= set(MODULES)


def test_nothing_imports_the_cli_and_demo_imports_no_cli() -> None:
    """The CLI is the edge (parse -> core -> view): the demo and every other module are below it,
    so the CLI and the demo do not import each other in a cycle (the demo verb calls run_demo)."""
    importers = sorted(module for module in MODULES if module != "raddiag.cli" and "raddiag.cli" in _imported_modules(module))
    assert importers == [], f"modules importing raddiag.cli: {importers}"
    assert "raddiag.cli" not in _imported_modules("raddiag.demo")


def _module_aliases(module: str) -> dict[str, str]:
    """Local names bound to raddiag modules (``from raddiag import tracking``, ``import raddiag.x as y``)."""
    aliases = {}
    for node in _runtime_nodes(MODULES[module]):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name in MODULES and alias.asname:
                    aliases[alias.asname] = alias.name
        elif isinstance(node, ast.ImportFrom):
            source = _absolute(module, node)
            for alias in node.names:
                if f"{source}.{alias.name}" in MODULES:
                    aliases[alias.asname or alias.name] = f"{source}.{alias.name}"
    return aliases


def _private_uses(module: str) -> set[tuple[str, str, str]]:
    """(module, other module, private name) for each private name of another raddiag module that
    ``module`` imports or reads as an attribute of an imported module. Dunder names are public."""
    def private(name: str) -> bool:
        return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))

    found = set()
    for source, name, _ in _imports(module):
        if name and source.startswith("raddiag") and source != module and private(name):
            found.add((module, source, name))
    aliases = _module_aliases(module)
    for node in _runtime_nodes(MODULES[module]):
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases
                and private(node.attr) and aliases[node.value.id] != module):
            found.add((module, aliases[node.value.id], node.attr))
    return found


def test_no_module_imports_a_private_name_of_another() -> None:
    found = set().union(*(_private_uses(module) for module in MODULES))
    assert not found, "private names used across modules (make them public, or move the caller): " + ", ".join(
        f"{m} uses {src}.{name}" for m, src, name in sorted(found))


def _is_view(module: str) -> bool:
    return module == "raddiag.views" or module.startswith("raddiag.views.")


@pytest.mark.parametrize("module", sorted(m for m in MODULES if not _is_view(m)))
def test_rendering_lives_in_views(module: str) -> None:
    """Outside views: no rich imports (the CLI may import rich.console for its Console objects), no
    Console built (except by the CLI), no ``html`` module, no HTML template strings."""
    problems = []
    for source, name, node in _imports(module):
        if source in ("rich", "html") or source.startswith("rich."):
            if not (module == "raddiag.cli" and source == "rich.console" and name == "Console"):
                problems.append(f"line {node.lineno}: imports {source}{'.' + name if name else ''}")
    for node in _runtime_nodes(MODULES[module]):
        if isinstance(node, ast.Call) and module != "raddiag.cli":
            callee = ast.unparse(node.func)
            if callee == "Console" or callee.endswith(".Console"):
                problems.append(f"line {node.lineno}: builds a rich Console")
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            text = node.value.lower()
            if any(marker in text for marker in HTML_MARKERS):
                problems.append(f"line {node.lineno}: an HTML template")
    assert problems == [], f"{module}: rendering outside raddiag.views: {problems}"


def test_the_cli_imports_views_inside_its_commands() -> None:
    """Module-level imports of the CLI load no view (and so no rich table/progress code)."""
    top_level = [node for node in MODULES["raddiag.cli"].body if isinstance(node, (ast.Import, ast.ImportFrom))]
    names = {_absolute("raddiag.cli", n) if isinstance(n, ast.ImportFrom) else a.name for n in top_level for a in n.names}
    assert not any(_is_view(name) for name in names), names


def test_help_loads_no_view_metric_table_or_numpy() -> None:
    """``raddiag --help`` (≤ 0.5 s) imports no view, not the metric table and not numpy: the config
    defaults are built at import time, so nothing they validate may import raddiag.metrics."""
    import subprocess
    import sys

    code = (
        "import sys\nsys.argv = ['raddiag', '--help']\nfrom raddiag.cli import main\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        "print('LOADED', sorted(m for m in sys.modules if m.split('.')[0] == 'numpy' or m.startswith(('raddiag.views', 'raddiag.metrics'))))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert "Usage: raddiag" in result.stdout
    assert result.stdout.strip().splitlines()[-1] == "LOADED []", result.stdout[-500:]
