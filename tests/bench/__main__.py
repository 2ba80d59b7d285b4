"""`make bench`: run every tests/bench/bench_*.py module's `main()` in turn.

Each benchmark measures hyperpi against the Node reference in the same run, prints the
ratios, and writes its numbers to tests/bench/results/<name>.json. Pass names to run a subset:
`python -m tests.bench append sync`.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main(argv: list[str]) -> int:
    known = sorted(p.stem.removeprefix("bench_") for p in HERE.glob("bench_*.py"))
    names = argv or known
    unknown = [name for name in names if name not in known]
    if unknown:
        print(f"no benchmark named {', '.join(unknown)}; benchmarks: {', '.join(known)}", file=sys.stderr)
        return 2
    failed = []
    for name in names:
        print(f"== bench {name}", flush=True)
        try:
            importlib.import_module(f"tests.bench.bench_{name}").main()
        except Exception as error:  # one broken benchmark must not hide the others' numbers
            print(f"bench {name} failed: {error!r}", flush=True)
            failed.append(name)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
