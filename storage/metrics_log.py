"""A run's metrics as JSON lines in `runs/<run_id>/metrics.jsonl`.

Stages and training append here and never open DuckDB; the flow bulk-loads the file into the
registry when the run is recorded (one `read_json` instead of a row-by-row insert), or, for a
run killed before that, the next run does when it records it as `crashed`. A line may name the
`model` it belongs to (the label of one model of a ladder); run-level lines do not."""

from __future__ import annotations

import json
from pathlib import Path

from lm.clock import utc_now

RUN_METRICS_FILE = "metrics.jsonl"


class MetricsLog:
    def __init__(self, path: Path):
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)

    def log_many(
        self, values: dict[str, float | None], step: int = 0, model: str | None = None
    ) -> None:
        """Append the values, all at `step`; one that is None (a figure with nothing to say,
        as the spread of one seed) is left out."""
        timestamp = utc_now().isoformat()
        lines = [
            json.dumps(_line(key, step, float(value), timestamp, model))
            for key, value in values.items()
            if value is not None
        ]
        if lines:
            with open(self.path, "a", encoding="utf-8") as out:
                out.write("\n".join(lines) + "\n")

    def log(self, key: str, value: float, step: int = 0, model: str | None = None) -> None:
        self.log_many({key: value}, step, model)

    def append_file(self, other: Path, model: str | None = None, cut_short: bool = False) -> None:
        """Add another metrics file's lines (a training run's curve) to this run's, tagged
        with the model they belong to. With `cut_short` (the file of a training that was
        stopped), a line its writer did not finish is left out."""
        if not other.is_file():
            return
        with open(other, encoding="utf-8") as source, open(self.path, "a", encoding="utf-8") as out:
            for raw in source:
                if not raw.strip():
                    continue
                try:
                    line = json.loads(raw)
                except json.JSONDecodeError:
                    if cut_short:
                        continue
                    raise
                if cut_short and not isinstance(line, dict):
                    continue
                if model is not None:
                    line["model"] = model
                out.write(json.dumps(line) + "\n")


def _line(key: str, step: int, value: float, timestamp: str, model: str | None) -> dict:
    line = {"key": key, "step": step, "value": value, "ts": timestamp}
    if model is not None:
        line["model"] = model
    return line
