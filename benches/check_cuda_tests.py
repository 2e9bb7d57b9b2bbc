"""Judge the CUDA test runs of benches/gpu_check.sh from their JUnit XML reports (pytest --junitxml).

On a GPU machine a skipped test is a failure (the only allowed skip is "no CUDA device", and there is
one), so is an empty run, and so is an op without a CUDA test that ran: every op module of
fastssl.ops whose ``BACKENDS`` table names a CUDA back end must have at least one passed test in
``tests/ops/test_<module>.py`` (or a passed test named after one of its ops).

    python benches/check_cuda_tests.py REPORT.xml [REPORT.xml ...] [--no-op-coverage]

Prints the counts and every problem; exits 1 if there is one.
"""

from __future__ import annotations

import argparse
import sys
import xml.etree.ElementTree as ET
from pathlib import Path


def read_junit(path: str | Path) -> list[dict]:
    """[{'classname', 'name', 'outcome': passed|failed|error|skipped, 'message'}] of one report."""
    cases = []
    for case in ET.parse(path).getroot().iter("testcase"):
        outcome, message = "passed", ""
        for tag in ("failure", "error", "skipped"):
            el = case.find(tag)
            if el is not None:
                outcome = "failed" if tag == "failure" else tag
                message = (el.get("message") or el.text or "").strip().splitlines()[0:1]
                message = message[0] if message else ""
                break
        cases.append({"classname": case.get("classname", ""), "name": case.get("name", ""),
                      "outcome": outcome, "message": message})
    return cases


def cuda_op_modules() -> dict[str, list[str]]:
    """{module short name: [op names]} of the fastssl.ops modules that declare a CUDA back end."""
    from fastssl import ops

    mods: dict[str, list[str]] = {}
    modules = {sys.modules[getattr(ops, name).__module__] for name in ops.__all__}
    for module in sorted(modules, key=lambda m: m.__name__):
        for op, table in getattr(module, "BACKENDS", {}).items():
            if table.get("cuda"):
                mods.setdefault(module.__name__.rsplit(".", 1)[-1], []).append(op)
    return mods


def problems(cases: list[dict], op_modules: dict[str, list[str]] | None) -> list[str]:
    out = []
    if not cases:
        out.append("no test ran (an empty CUDA run proves nothing)")
    for c in cases:
        if c["outcome"] != "passed":
            out.append(f"{c['outcome'].upper()}: {c['classname']}::{c['name']}  {c['message']}".rstrip())
    passed = [c for c in cases if c["outcome"] == "passed"]
    for module, op_names in sorted((op_modules or {}).items()):
        prefix = f"tests.ops.test_{module}"
        if not any(c["classname"] == prefix or c["classname"].startswith(prefix + ".")
                   or any(op in c["name"] for op in op_names) for c in passed):
            out.append(f"NO CUDA TEST: fastssl.ops.{module} ({', '.join(op_names)}) has a CUDA back end but no "
                       f"CUDA test of it passed (expected in tests/ops/test_{module}.py)")
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("reports", nargs="+", help="JUnit XML files written by pytest --junitxml")
    p.add_argument("--no-op-coverage", action="store_true", help="don't require a CUDA test per op module")
    args = p.parse_args(argv)
    cases = []
    for report in args.reports:
        if not Path(report).is_file():
            print(f"check_cuda_tests: error: no report {report} (pytest did not finish?)")
            return 1
        try:
            cases += read_junit(report)
        except ET.ParseError as e:
            print(f"check_cuda_tests: error: {report} is not a JUnit XML report ({e})")
            return 1
    found = problems(cases, None if args.no_op_coverage else cuda_op_modules())
    counts = {k: sum(c["outcome"] == k for c in cases) for k in ("passed", "failed", "error", "skipped")}
    print("tests: " + ", ".join(f"{v} {k}" for k, v in counts.items()))
    for line in found:
        print(line)
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
