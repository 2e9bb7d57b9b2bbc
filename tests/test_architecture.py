"""The house's rules (docs/architecture.md), checked on the code's own imports (function-level ones too):
layers as folders with imports only pointing down (import-linter, contracts in pyproject.toml), and no
import cycle anywhere, between rooms or inside one."""

import subprocess
import sys
from pathlib import Path

import grimp
import pytest

ROOT = Path(__file__).resolve().parents[1]


def _graph():
    return grimp.build_graph("fastssl", include_external_packages=False)


def _cycles(graph) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), each a sorted list of modules."""
    index, low, on_stack, stack, out = {}, {}, set(), [], []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.find_modules_directly_imported_by(v):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for m in sorted(graph.modules):
        if m not in index:
            visit(m)
    return out


def test_imports_only_point_down():
    """import-linter's own command on the contracts of pyproject.toml (exit 0 only when every one is kept)."""
    lint = Path(sys.executable).with_name("lint-imports")
    cmd = [str(lint)] if lint.exists() else ["lint-imports"]
    p = subprocess.run([*cmd, "--config", str(ROOT / "pyproject.toml"), "--no-cache"], cwd=ROOT,
                       capture_output=True, text=True)
    assert p.returncode == 0 and "0 broken" in p.stdout, p.stdout[-3000:] + p.stderr[-2000:]


def test_no_import_cycles():
    cycles = _cycles(_graph())
    assert not cycles, "import cycles: " + " | ".join(" <-> ".join(c) for c in cycles)


def test_the_cycle_finder_finds_a_planted_cycle():
    class G:  # a -> b -> c -> a, d -> a
        modules = {"a", "b", "c", "d"}

        @staticmethod
        def find_modules_directly_imported_by(m):
            return {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}[m]

    assert _cycles(G) == [["a", "b", "c"]]


@pytest.mark.parametrize("module", ["fastssl.base.errors", "fastssl.base.argtypes", "fastssl.base.cache"])
def test_base_imports_nothing_above_it(module):
    graph = _graph()
    above = {m for m in graph.find_modules_directly_imported_by(module) if not m.startswith("fastssl.base")}
    assert not above, f"{module} imports {above}"
