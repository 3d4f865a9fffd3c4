"""`make bench`: run every benchmark in turn; each writes its JSON to benchmarks/results/.

    python benchmarks/run_all.py            # the full targets (1M-vector index included: long)
    python benchmarks/run_all.py --quick    # smaller sizes, minutes
    python benchmarks/run_all.py --only prepare validate

The index, serve and train benchmarks use the trained models in models/ and the prepared cache in
data/prepared when present (run `make run` first); serve falls back to a stand-in model pair.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
INDEX_EMBEDDINGS = HERE.parent / "models" / "index" / "embeddings.npy"  # written by the index stage


def commands(quick: bool) -> dict[str, list[str]]:
    """Benchmark name -> argv (after the interpreter)."""
    return {
        "validate": [str(HERE / "bench_validate.py")],
        "prepare": [str(HERE / "bench_prepare.py")],
        "train": [str(HERE / "bench_train.py")] + (["--quick"] if quick else []),
        "embed": [str(HERE / "bench_embed.py")] + (["--limit", "1024", "--train-steps", "15"] if quick else []),
        # both ANN backends side by side; the real part reuses the index stage's stored embeddings
        "index": [str(HERE / "bench_index.py"), "--backend", "annoy,hnsw", "--target", "0.95", "--rescore", "100"]
        + (["--embeddings-npy", str(INDEX_EMBEDDINGS)] if INDEX_EMBEDDINGS.is_file() else [])
        + (["--n", "100000"] if quick else []),
        "serve": [str(HERE / "bench_serve.py"), "--build-proxy"] + (["--duration", "10"] if quick else []),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smaller sizes")
    ap.add_argument("--only", nargs="+", help="run only these benchmarks")
    args = ap.parse_args(argv)
    todo = commands(args.quick)
    failed = []
    for name, cmd in todo.items():
        if args.only and name not in args.only:
            continue
        print(f"== bench {name}: {' '.join(cmd)}", flush=True)
        started = time.perf_counter()
        code = subprocess.call([sys.executable, *cmd])
        print(f"== bench {name}: exit {code} after {time.perf_counter() - started:.0f} s", flush=True)
        if code != 0:
            failed.append(name)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
