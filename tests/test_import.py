"""import fastdrop stays cheap: triton and torch._dynamo load only when needed; the checkout
shadows no installed package."""

import importlib.metadata
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import torch

from fastdrop import variants

HEAVY = ("triton", "torch._dynamo")


def loaded_after(code: str) -> set:
    code += f"\nimport sys; print([m for m in {HEAVY!r} if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True, timeout=120)
    return set(eval(out.stdout.strip().splitlines()[-1]))


def test_import_loads_neither_triton_nor_dynamo():
    assert loaded_after("import torch, fastdrop") == set()


def test_a_cpu_call_loads_neither():
    code = ("import torch, fastdrop\nfastdrop.dropout(torch.ones(10), 0.5, seed=1)\n"
            "fastdrop.alpha_dropout(torch.ones(10), 0.5, True)")
    assert loaded_after(code) == set()


def test_alpha_constants_are_marked_as_dynamo_marks_them():
    # variants marks alpha_form itself, as torch._dynamo.assume_constant_result would.
    marked = torch._dynamo.assume_constant_result(lambda: 0)
    assert {k: v for k, v in vars(marked).items()} == {"_dynamo_marked_constant": True}
    assert variants.alpha_form._dynamo_marked_constant is True


# ---- the checkout shadows no installed package ------------------------------------------------

ROOT = Path(__file__).resolve().parents[1]


def _importable_names(folder: Path) -> set:
    """Top-level names that ``folder`` on sys.path makes importable as a module or a regular
    package (a folder without __init__.py is only a namespace portion: any installed regular
    package of that name wins over it)."""
    names = {p.stem for p in folder.glob("*.py")}
    names |= {p.name for p in folder.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    return names


def test_the_checkout_shadows_no_installed_package():
    # python -m pytest and python -m bench... put the checkout's root first on sys.path, and
    # pytest puts tests/ there (its modules import each other by name).
    installed = {name for name, dists in importlib.metadata.packages_distributions().items()
                 if any(d.lower() != "fastdrop" for d in dists)}
    for folder in (ROOT, ROOT / "tests"):
        clash = _importable_names(folder) & installed
        assert not clash, f"{folder} shadows the installed top-level package(s) {sorted(clash)}"


def test_kernels_resolves_past_the_checkout():
    # The Triton source's top-level kernels/ folder is importable only as fastdrop.kernels.
    # Hugging Face's `kernels` (a dependency of transformers) must stay the one `import kernels`
    # finds when code runs from the checkout; without it, no regular package of that name.
    code = ("import importlib.util, json; s = importlib.util.find_spec('kernels'); "
            "print(json.dumps(None if s is None else s.origin))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, capture_output=True, text=True,
                         timeout=120)
    origin = json.loads(out.stdout.strip().splitlines()[-1])
    if origin is not None:  # the checkout's own files, not a virtual environment that lies in it
        where = Path(origin).resolve()
        assert not where.is_relative_to(ROOT) or where.is_relative_to(Path(sys.prefix).resolve()), origin
    if importlib.util.find_spec("kernels") is not None:  # Hugging Face's, installed with transformers
        assert origin is not None and "site-packages" in origin, origin
    import fastdrop.kernels.dropout
    assert Path(fastdrop.kernels.dropout.__file__).resolve() == ROOT / "kernels" / "dropout.py"


def _imports_of(path: Path, package: str) -> set:
    """fastdrop modules a file imports, at module level or inside functions."""
    import ast

    tree = ast.parse(path.read_text())
    here = package.split(".")
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            base = here[:len(here) - node.level + 1] if node.level else []
            module = ".".join(base + ([node.module] if node.module else []))
            if node.level == 0 and not module.startswith("fastdrop"):
                continue
            for alias in node.names:  # `from . import x` imports module x where there is one
                found.add(f"{module}.{alias.name}" if module else alias.name)
                found.add(module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("fastdrop"))
    return found


def test_no_import_cycles():
    # A module of fastdrop never reaches itself through the modules it imports.
    pkg = ROOT / "fastdrop"
    modules = {}
    for path in pkg.rglob("*.py"):
        rel = path.relative_to(ROOT).with_suffix("")
        name = ".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)
        package = name if rel.name == "__init__" else name.rpartition(".")[0]
        modules[name] = path, package
    graph = {name: {m for m in _imports_of(path, package) if m in modules and m != name}
             for name, (path, package) in modules.items()}
    # A package imports its own __init__ anyway: an edge to a parent package is not a cycle.
    graph = {n: {m for m in deps if not n.startswith(m + ".")} for n, deps in graph.items()}
    state, stack = {}, []

    def visit(n):
        state[n] = "open"
        stack.append(n)
        for m in sorted(graph[n]):
            if state.get(m) == "open":
                raise AssertionError("import cycle: " + " -> ".join(stack[stack.index(m):] + [m]))
            if m not in state:
                visit(m)
        stack.pop()
        state[n] = "done"

    for n in sorted(graph):
        if n not in state:
            visit(n)
    assert "fastdrop._general" in graph and graph["fastdrop._general"], "the import graph was not read"
