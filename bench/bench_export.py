"""Peak memory and time of `lmforge runs export` (RunRegistry.export_parquet) over a registry
whose metrics table holds many rows, as months of per-step logging give.

    .venv/bin/python bench/bench_export.py [--rows 20000000]

It records one run through RunRegistry, fills its metrics table with `--rows` rows in DuckDB,
then exports every table in a fresh process and prints the seconds, the peak RSS and the rows
written. Each export runs in its own process so the peak is the export's alone.
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.cli_args import description, positive_int  # noqa: E402


def export_once(registry_path: Path, out: Path) -> None:
    from storage.registry import RunRegistry

    started = time.perf_counter()
    written = RunRegistry(registry_path).export_parquet(out)
    seconds = time.perf_counter() - started
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    rows = written["metrics"][1]
    print(f"export: {seconds:.1f} s, peak RSS {peak_mb:,.0f} MB, {rows:,} metric rows")


def main() -> None:
    parser = argparse.ArgumentParser(description=description(__doc__))
    parser.add_argument("--rows", type=positive_int, default=20_000_000)
    parser.add_argument("--export", type=Path, help=argparse.SUPPRESS)  # the child's registry
    args = parser.parse_args()
    if args.export:
        export_once(args.export, args.export.parent / "history")
        return
    import duckdb

    from storage.registry import RunRegistry

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "registry.duckdb"
        RunRegistry(path).start_run({"run_id": "r1", "status": "running",
                                     "started_at": datetime.now(UTC)})  # fmt: skip
        with duckdb.connect(str(path)) as connection:
            connection.execute(
                "INSERT INTO metrics SELECT 'r1', 'train/loss', i, random(), now(), NULL "
                "FROM range(?) t(i)",
                [args.rows],
            )
        print(f"registry: {path.stat().st_size / 1e6:,.0f} MB")
        subprocess.run([sys.executable, __file__, "--export", str(path)], check=True)


if __name__ == "__main__":
    main()
