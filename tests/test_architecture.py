"""The package's shape: no import cycle inside dissect_kernels (imports inside functions count),
the kernel layer (ops/, stats/, triton/, reference/, the native loader) never imports a driver,
the engine, the CLI or the report, and no driver module or function grows past its bound."""
import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parent.parent / "dissect_kernels"
KERNEL_LAYER = ("dissect_kernels.ops", "dissect_kernels.stats", "dissect_kernels.triton",
                "dissect_kernels.reference", "dissect_kernels._native", "dissect_kernels.geometry",
                "dissect_kernels.conventions")
ABOVE_KERNELS = ("dissect_kernels.dissect", "dissect_kernels.generator", "dissect_kernels.ace",
                 "dissect_kernels.alpha", "dissect_kernels.ablation", "dissect_kernels.gan_setup",
                 "dissect_kernels.engine", "dissect_kernels.cli", "dissect_kernels.report")
DRIVERS = ("dissect.py", "dissect_plan.py", "generator.py", "ace.py", "alpha.py", "ablation.py", "gan_setup.py",
           "generated.py")
MAX_DRIVER_LINES = 250
MAX_FUNCTION_LINES = 60


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PKG.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in PKG.rglob("*.py")}


def imports_of(name: str) -> set[str]:
    """The package modules `name` imports anywhere in its file (a `from pkg import sub` of a
    submodule counts as importing the submodule, not the package's __init__)."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1] + ([base] if base else []))
            for a in node.names:
                sub = f"{base}.{a.name}"
                found.add(sub if sub in MODULES else base)
    return {m for m in found if m in MODULES and m != name}


GRAPH = {name: imports_of(name) for name in MODULES}


def find_cycle() -> list[str] | None:
    """One import cycle among the package's modules (the top-level face excluded), or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str):
        state[m] = 1
        stack.append(m)
        for n in sorted(GRAPH[m]):
            if n == "dissect_kernels":
                continue
            if state.get(n) == 1:
                return stack[stack.index(n):] + [n]
            if n not in state and (cycle := visit(n)):
                return cycle
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(MODULES):
        if m != "dissect_kernels" and m not in state and (cycle := visit(m)):
            return cycle
    return None


def test_no_import_cycle():
    cycle = find_cycle()
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_checker_finds_a_planted_cycle(monkeypatch):
    monkeypatch.setitem(GRAPH, "dissect_kernels.ops.tally", GRAPH["dissect_kernels.ops.tally"] | {"dissect_kernels.dissect"})
    assert find_cycle() is not None


@pytest.mark.parametrize("name", sorted(m for m in MODULES if m.startswith(KERNEL_LAYER)))
def test_kernel_layer_imports_no_driver_cli_or_report(name):
    bad = sorted(m for m in GRAPH[name] if m.startswith(ABOVE_KERNELS) or m == "dissect_kernels")
    assert not bad, f"{name} (kernel layer) imports {bad}"


def test_driver_modules_stay_short():
    long = {f: n for f in DRIVERS if (n := len((PKG / f).read_text().splitlines())) > MAX_DRIVER_LINES}
    assert not long, f"driver modules over {MAX_DRIVER_LINES} lines: {long}"


def test_functions_stay_short():
    long = []
    for name, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > MAX_FUNCTION_LINES:
                    long.append(f"{name}.{node.name} ({n} lines)")
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines: {long}"
