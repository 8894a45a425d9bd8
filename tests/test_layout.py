"""The layout's rules, read from the source (docs/ARCHITECTURE.md draws them): which package
may import which, that the API and the contract never import mlx, that views never import
views, and that no package has an import cycle. Function-level imports count too."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("api", "contract", "runtime", "managers", "work", "mlx_common", "worker_text", "worker_vision",
            "worker_embedding")  # fmt: skip
MLX = {"mlx", "mlx_lm", "mlx_vlm", "mlx_common", "worker_text", "worker_vision", "worker_embedding"}
WEB = {"flask", "werkzeug", "gunicorn", "api", "rq_dashboard", "prometheus_client"}

MAY_IMPORT = {
    # package: the first-party packages it may import (besides itself)
    "contract": set(),
    "work": {"contract"},
    "runtime": {"contract"},
    "managers": {"contract"},
    "api": {"contract", "work"},
    "mlx_common": {"contract", "runtime"},
    "worker_text": {"contract", "runtime", "managers", "mlx_common"},
    "worker_vision": {"contract", "runtime", "managers", "work", "mlx_common"},
    "worker_embedding": {"contract", "runtime", "managers", "mlx_common"},
}
FORBIDDEN = {
    "contract": MLX | WEB,
    "work": MLX | WEB,
    "runtime": MLX | WEB,
    "managers": MLX | WEB,
    "api": MLX,
    "mlx_common": WEB | {"mlx_lm", "mlx_vlm"},
    "worker_text": WEB | {"mlx_vlm"},
    "worker_vision": WEB | {"mlx_lm"},
    "worker_embedding": WEB | {"mlx_vlm"},
}


def modules(package: str) -> dict[str, Path]:
    return {
        ".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__"): p
        for p in (ROOT / package).rglob("*.py")
    }


def imports(module: str, path: Path) -> set[str]:
    """Absolute names of every module this one imports, anywhere in it."""
    found: set[str] = set()
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")
                parent = parent[: len(parent) - node.level + 1]
                base = ".".join(parent + ([base] if base else []))
            found.add(base)
            # `from pkg import mod` imports the module pkg.mod when there is one
            found |= {f"{base}.{alias.name}" for alias in node.names}
    return found


ALL = {name: path for package in PACKAGES for name, path in modules(package).items()}


@pytest.mark.parametrize("package", PACKAGES)
def test_packages_import_only_what_the_layout_allows(package):
    wrong = []
    for module, path in modules(package).items():
        for name in imports(module, path):
            top = name.split(".")[0]
            if top in FORBIDDEN[package] or (top in PACKAGES and top != package and top not in MAY_IMPORT[package]):
                wrong.append(f"{module} imports {name}")
    assert not wrong, "\n".join(sorted(set(wrong)))


def test_views_never_import_views():
    views = {m for m, p in modules("api").items() if "Blueprint(" in p.read_text()}
    wrong = [f"{m} imports {n}" for m in views for n in imports(m, ALL[m]) if n in views and n != m]
    assert not wrong, "\n".join(wrong)


def test_no_import_cycles():
    graph = {m: {n for n in imports(m, p) if n in ALL and n != m} for m, p in ALL.items()}
    # A package's __init__ importing its own modules is how packages work, not a cycle.
    graph = {m: {n for n in deps if not (m.count(".") == 0 and n.startswith(m + "."))} for m, deps in graph.items()}
    cycles, state = [], {}

    def visit(m, trail):
        state[m] = "open"
        for n in graph[m]:
            if state.get(n) == "open":
                cycles.append(" -> ".join(trail[trail.index(n) :] + [n]))
            elif n not in state:
                visit(n, trail + [n])
        state[m] = "done"

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    assert not cycles, "\n".join(cycles)


def test_the_rules_see_real_imports():
    """The scan itself works: it sees the imports every worker kind really makes."""
    assert "mlx_lm.generate" in imports("worker_text.engine", ALL["worker_text.engine"])
    assert "contract.queues" in imports("api.chat", ALL["api.chat"])
    assert "api.intake" in imports("api.chat", ALL["api.chat"])
