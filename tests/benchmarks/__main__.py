"""``make bench``: every benchmark against one local broker and registry, then one JSON line.

    python -m tests.benchmarks [--repeat R] [--only codec,sink,...] [--before REV]

Names: codec, pipeline, latency, sink, gateway (the default), and scaling (the pipeline's
replays alone: 1 worker, 2 workers, ``govesb worker --processes 2``).

Each figure is the median of R repetitions (at least 3) with min and max; ratios are taken
per repetition against a baseline run side by side in the same process tree, so drift on
this noisy 2-core machine hits both sides alike. The last line of output is one JSON object
with every figure.

``--before REV`` runs the same benchmarks on ``REV``'s code too, alternating the two sides in
each repetition, and prints every figure before, after and their quotient
(:mod:`tests.benchmarks.before`).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import sys
import time
from pathlib import Path
from typing import Any

from streams.settings import REPO_ROOT
from tests.benchmarks import before
from tests.benchmarks.common import bench_bus, print_section

BENCHMARKS = {  # name -> module, in the order the issue lists them
    "codec": "tests.benchmarks.bench_codec",
    "pipeline": "tests.benchmarks.bench_pipeline",
    "scaling": "tests.benchmarks.bench_scaling",
    "latency": "tests.benchmarks.bench_latency",
    "sink": "tests.benchmarks.bench_sink",
    "gateway": "tests.benchmarks.bench_gateway",
    "requests": "tests.benchmarks.bench_requests",
}
DEFAULT = [name for name in BENCHMARKS if name != "scaling"]  # pipeline runs its replays too


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=3, help="repetitions (at least 3)")
    parser.add_argument("--only", default=",".join(DEFAULT), help="comma-separated names")
    parser.add_argument("--before", metavar="REV", help="also run REV's code, side by side")
    parser.add_argument("--once", action="store_true", help=argparse.SUPPRESS)  # one side's run
    parser.add_argument("--json-out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    names = [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown benchmark(s) {', '.join(unknown)}; known: {', '.join(BENCHMARKS)}")
    repeat = 1 if args.once else max(3, args.repeat)
    report: dict[str, Any] = {"repetitions": repeat, "code": str(REPO_ROOT)}
    failed = []
    with bench_bus() as bus:
        if args.before:
            bus_env = {"GOVESB_TEST_BOOTSTRAP": bus.bootstrap,
                       "GOVESB_TEST_REGISTRY": bus.registry_url}  # fmt: skip
            comparison = before.main(names, repeat, args.before, bus_env)
            print(json.dumps({"repetitions": repeat, "before_after": comparison}))
            return 0
        for name in names:
            started = time.monotonic()
            print(f"[{name}] running ...", file=sys.stderr, flush=True)
            try:
                module = importlib.import_module(BENCHMARKS[name])
                section = asyncio.run(module.run(bus, repeat))
            except Exception as error:  # one failing benchmark must not hide the others
                print(f"[{name}] failed: {type(error).__name__}: {error}", file=sys.stderr)
                report[name] = {"error": f"{type(error).__name__}: {error}"}
                failed.append(name)
                continue
            print_section(section)
            report[name] = section.as_dict() | {"seconds": round(time.monotonic() - started, 1)}
    print(json.dumps(report))
    if args.json_out:
        args.json_out.write_text(json.dumps(report))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
