"""A run's metrics as JSON lines in `runs/<run_id>/metrics.jsonl`.

Stages and training append here and never open DuckDB; the flow bulk-loads the file into the
registry when the run is recorded (one `read_json` instead of a row-by-row insert)."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path


class MetricsLog:
    def __init__(self, path: Path):
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)

    def log(self, key: str, value: float, step: int = 0) -> None:
        line = {"key": key, "step": step, "value": float(value), "ts": datetime.now().isoformat()}
        with open(self.path, "a", encoding="utf-8") as out:
            out.write(json.dumps(line) + "\n")

    def append_file(self, other: Path) -> None:
        """Add another metrics file's lines (a training run's curve) to this run's."""
        if other.is_file():
            with open(self.path, "a", encoding="utf-8") as out:
                out.write(other.read_text(encoding="utf-8"))

    def log_many(self, values: dict[str, float], step: int = 0) -> None:
        for key, value in values.items():
            self.log(key, value, step)
