"""Wall time of the validate stage on the full real catalogue (40,028 images).

Runs ``run_validate`` (per-image facts with ``--workers`` processes, both GX suites, Data Docs)
into a temporary directory, using the committed ``gx/`` context, and writes
``benchmarks/results/validate.json``. Target: under 60 s on a 2-core machine. The machine may
be shared with other jobs: the load average before and after is recorded.

    .venv/bin/python benchmarks/bench_validate.py [--data DIR] [--workers 2]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "fashion-product-images-small"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=os.environ.get("FASHION_DATA", str(DEFAULT_DATA)))
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--target-s", type=float, default=60.0)
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "validate.json"))
    args = parser.parse_args(argv)

    sys.path.insert(0, str(REPO / "src"))
    start_all = time.perf_counter()
    from fashionops.config import load_params
    from fashionops.data.validation import run_validate
    from fashionops.errors import ValidationFailed

    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="bench_validate_") as tmp:
        params = load_params(
            REPO / "params.yaml",
            [
                f"paths.raw_dir={args.data}",
                f"paths.facts={Path(tmp) / 'image_facts.parquet'}",
                f"paths.reports_dir={Path(tmp) / 'reports'}",
                f"paths.gx_dir={REPO / 'gx'}",
                f"validate.workers={args.workers}",
            ],
        )
        start = time.perf_counter()
        try:
            result = run_validate(params.validate, params.paths, label=params.prepare.label)
            passed = True
        except ValidationFailed as exc:
            print(f"validation failed: {exc}", file=sys.stderr)
            result = json.loads((params.paths.reports("validation") / "summary.json").read_text())
            passed = False
        seconds = time.perf_counter() - start
    rows = int(result["rows"])
    out = {
        "benchmark": "validate",
        "data": args.data,
        "rows": rows,
        "passed": passed,
        "seconds": round(seconds, 2),
        "seconds_with_imports": round(time.perf_counter() - start_all, 2),
        "images_per_s": round(rows / seconds, 1),
        "stage_seconds": result["seconds"],
        "duplicate_groups": result["duplicate_groups"],
        "warnings": result["warnings"],
        "target_s": args.target_s,
        "meets_target": seconds < args.target_s,
        "workers": args.workers,
        "machine": {
            "cpu_count": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "processor": platform.processor() or platform.machine(),
            "loadavg_before": [round(x, 2) for x in load_before],
            "loadavg_after": [round(x, 2) for x in os.getloadavg()],
        },
        "notes": "CPU shared with other jobs during the run (see loadavg); "
        "'seconds' excludes Python/GX import time, 'seconds_with_imports' includes it.",
    }
    path = Path(args.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out, indent=2))
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
