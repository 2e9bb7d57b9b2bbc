"""Ahead-of-time compiles of fastssl's Triton kernels for sm80/86/89/90 (no GPU needed): the shared part
of tests/ops/test_nt_xent_aot.py and tests/ops/test_mae_kernels_aot.py.

The interpreter does not show what the compiler does: registers, spills, shared memory. A test builds
its op's launch plans (the launchers' own ``(kernel, grid, args, kwargs)`` lists, from CPU tensors of
the real shapes) and turns each launch into a *spec* with :func:`specialize`: exactly the
specialization ``JITFunction.run`` gives those arguments (dtypes, divisibility-by-16 hints on
pointers and ints, ints == 1 as constants), in plain JSON. :func:`compile_spec` compiles a spec for
one arch and reads the cubin's resource usage with the cuobjdump bundled with Triton
(``-res-usage``: registers, stack, local memory, static shared memory) and its SASS (local loads and
stores ``LDL``/``STL``: spills); :func:`check` fails on any local memory or spill instruction and on
static + dynamic shared memory above the arch's per-block limit (:data:`SMEM_LIMIT`).

Specs are plain data, so the compile half runs under any Triton without torch: the GPU machine's
Triton (3.6) can be checked from a throwaway venv::

    python tests/ops/test_mae_kernels_aot.py --dump /tmp/mae.json [--full]    # torch + this Triton
    python tests/ops/test_nt_xent_aot.py --dump /tmp/ntx.json [--full]
    /path/to/venv/bin/python tests/ops/aot_helpers.py /tmp/mae.json /tmp/ntx.json  # any Triton, no torch

The last command prints one row per compile and exits 1 if a row fails the checks.
"""

from __future__ import annotations

import importlib
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:  # this checkout's fastssl and kernels/, also when run as a script
    sys.path.insert(0, str(REPO))
ARCHS = [(8, 0), (8, 6), (8, 9), (9, 0)]
# Per-block shared memory limits (bytes, the opt-in maximum of each compute capability): sm80 (A100)
# 163 KB, sm86/sm89 (RTX 30/40, A10, L4, L40S) 99 KB, sm90 (H100/H200) 227 KB. The same table as
# fastssl.ops.nt_xent.SMEM_LIMIT (test_nt_xent_aot checks that they agree).
SMEM_LIMIT = {(8, 0): 166912, (8, 6): 101376, (8, 7): 166912, (8, 9): 101376, (9, 0): 232448}


def _portable(v):
    """A constexpr value as JSON (tl.dtype -> {"tl_dtype": name})."""
    if isinstance(v, (bool, int, float, str)) or v is None:
        return v
    import triton.language as tl

    if isinstance(v, tl.dtype):
        return {"tl_dtype": v.name}
    if isinstance(v, tl.constexpr):
        return _portable(v.value)
    raise TypeError(f"cannot store constexpr value {v!r} ({type(v).__name__}) in a spec")


def _unportable(v):
    if isinstance(v, dict) and "tl_dtype" in v:
        import triton.language as tl

        return tl.dtype(v["tl_dtype"])
    return v


def specialize(kernel, args, kw, label: str = "") -> dict:
    """The spec of one launch ``kernel[grid](*args, **kw)``: what JITFunction.run specializes for these
    arguments (needs the argument values: torch tensors and ints), as JSON-able data."""
    from triton.backends.nvidia.compiler import CUDABackend
    from triton.runtime.jit import native_specialize_impl

    signature, constexprs, attrs = {}, {}, {}
    values = list(args) + [None] * (len(kernel.params) - len(args))
    for i, p in enumerate(kernel.params):
        v = kw[p.name] if p.name in kw else values[i]
        if p.is_constexpr:
            signature[p.name] = "constexpr"
            constexprs[p.name] = _portable(v)
            continue
        ty, attr = native_specialize_impl(CUDABackend, v, False, not p.do_not_specialize,
                                          not p.do_not_specialize_on_alignment)
        signature[p.name] = ty
        if ty == "constexpr":  # an int == 1
            constexprs[p.name] = _portable(attr)
        elif isinstance(attr, str) and attr:
            attrs[p.name] = attr
    options = {k: kw[k] for k in ("num_warps", "num_stages") if k in kw}
    module = kernel.fn.__module__.rsplit(".", 1)[-1]  # kernels/<module>.py
    return dict(module=module, kernel=kernel.fn.__name__, label=label, signature=signature, constexprs=constexprs,
                attrs=attrs, options=options)


def _kernel(module: str, name: str):
    return getattr(importlib.import_module(f"kernels.{module}"), name)


def _tool(name: str) -> str:
    import triton

    return str(Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / name)


def resources(cubin: bytes) -> dict:
    """Registers, stack, static shared and local memory of the cubin's kernel (cuobjdump -res-usage),
    and the number of local-memory loads/stores in its SASS (spills)."""
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        usage = subprocess.run([_tool("cuobjdump"), "-res-usage", f.name], capture_output=True, text=True,
                               check=True).stdout
        sass = subprocess.run([_tool("cuobjdump"), "-sass", f.name], capture_output=True, text=True,
                              check=True).stdout
    m = re.search(r"REG:(\d+) STACK:(\d+) SHARED:(\d+) LOCAL:(\d+)", usage)
    assert m, usage
    res = dict(zip(("regs", "stack", "static_smem", "local"), map(int, m.groups())))
    res["stl"] = len(re.findall(r"\bSTL(\.\w+)*\b", sass))
    res["ldl"] = len(re.findall(r"\bLDL(\.\w+)*\b", sass))
    return res


def compile_spec(spec: dict, arch: tuple[int, int]) -> dict:
    """Compile ``spec`` for compute capability ``arch`` with the installed Triton -> one result row."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.backends.nvidia.compiler import CUDABackend
    from triton.compiler import ASTSource

    kernel = _kernel(spec["module"], spec["kernel"])
    names = kernel.arg_names
    consts = {(names.index(k),): _unportable(v) for k, v in spec["constexprs"].items()}
    attrs = {(names.index(k),): CUDABackend.parse_attr(v) for k, v in spec["attrs"].items()}
    k = triton.compile(ASTSource(fn=kernel, signature=dict(spec["signature"]), constexprs=consts, attrs=attrs),
                       target=GPUTarget("cuda", arch[0] * 10 + arch[1], 32), options=dict(spec["options"]))
    res = resources(k.asm["cubin"])
    opts = spec["options"]
    return dict(arch=f"sm{arch[0]}{arch[1]}", kernel=spec["kernel"], label=spec["label"],
                config=f"w{opts.get('num_warps', 4)} s{opts.get('num_stages', 3)}",
                smem=res["static_smem"] + k.metadata.shared, smem_limit=SMEM_LIMIT[tuple(arch)], **res)


def compile_all(specs: list[tuple[tuple[int, int], dict]]) -> list[dict]:
    """One row per (arch, spec); specs that differ only in their label are compiled once (the first label)."""
    rows, seen = [], set()
    for arch, spec in specs:
        key = (tuple(arch), json.dumps({k: v for k, v in spec.items() if k != "label"}, sort_keys=True))
        if key not in seen:
            seen.add(key)
            rows.append(compile_spec(spec, tuple(arch)))
    return rows


def failed(row: dict) -> bool:
    return bool(row["stack"] or row["local"] or row["stl"] or row["ldl"] or row["smem"] > row["smem_limit"])


def check(rows: list[dict]) -> None:
    assert rows
    bad = [r for r in rows if failed(r)]
    assert not bad, "spills or shared memory over the limit:\n" + "\n".join(map(str, bad))


def table(rows: list[dict]) -> str:
    import triton

    out = [f"triton {triton.__version__}"]
    for r in rows:
        flag = "  <-- FAIL" if failed(r) else ""
        out.append(f"{r['arch']} {r['kernel']:<32} {r['label']:<34} {r['config']:<6} regs {r['regs']:>3} "
                   f"stack {r['stack']:>4} local {r['local']:>4} STL {r['stl']:>2} LDL {r['ldl']:>2} "
                   f"smem {r['smem']:>6}/{r['smem_limit']}{flag}")
    return "\n".join(out)


def run_script(script: str, *flags: str, timeout: float = 1500) -> list[dict]:
    """Rows of ``python SCRIPT --json FLAGS`` in a subprocess with TRITON_INTERPRET=0 (the kernels must be
    real JITFunctions; the test session runs the interpreter)."""
    import fastssl

    # the script imports the fastssl this process tests (a worktree's, not the editable install's)
    root = str(Path(fastssl.__file__).resolve().parents[1])
    path = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)
    env = dict(os.environ, TRITON_INTERPRET="0", PYTHONPATH=path)
    out = subprocess.run([sys.executable, script, "--json", *flags], env=env, capture_output=True, text=True,
                         timeout=timeout)
    assert out.returncode == 0, out.stderr[-4000:]
    return json.loads(out.stdout.splitlines()[-1])


def main(argv: list[str], build_specs) -> None:
    """The ``__main__`` of an AOT test file. ``build_specs(full)`` -> [(arch, spec)] (needs torch).
    ``--json``: compile and print the rows as JSON (last line); ``--dump FILE``: write the specs only;
    otherwise compile and print the table. ``--full``: the full grid."""
    os.environ["TRITON_INTERPRET"] = "0"
    specs = build_specs("--full" in argv)
    if "--dump" in argv:
        path = argv[argv.index("--dump") + 1]
        Path(path).write_text(json.dumps([[list(a), s] for a, s in specs]))
        print(f"{len(specs)} specs -> {path}")
        return
    rows = compile_all(specs)
    print(json.dumps(rows) if "--json" in argv else table(rows))


if __name__ == "__main__":  # compile dumped specs with whatever Triton this interpreter has (no torch needed)
    os.environ["TRITON_INTERPRET"] = "0"
    all_specs = []
    for p in sys.argv[1:]:
        all_specs += [(tuple(a), s) for a, s in json.loads(Path(p).read_text())]
    result = compile_all(all_specs)
    print(table(result))
    sys.exit(1 if any(failed(r) for r in result) else 0)
