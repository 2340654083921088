"""What a run produced, as the registry records it: its corpus version, tokenizer and models,
and its outcome (status, stages and all of those) in one value.

These are plain data with no database in them, so that a run's outcome can also be written to a
file and recorded later (`storage.pending_outcome`) when the registry cannot be written."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path

from lm.clock import read_time
from storage.stage_journal import StageRecord


@dataclass
class TokenizerRecord:
    digest: str
    corpus_digest: str | None  # None for a tokenizer adopted by a continued model
    path: str
    stats: dict


@dataclass
class ModelRecord:
    """A trained (and evaluated) model of a run; `path` is its workspace-relative train
    artifact folder."""

    label: str
    kind: str
    digest: str
    path: str
    tokenizer_digest: str
    corpus_digest: str
    config: dict
    stats: dict


@dataclass
class DatasetRecord:
    digest: str
    cache_key: str
    path: str
    stats: dict


@dataclass
class PromotionRecord:
    """A retrain's decision whether its model takes `alias` (the `champion`) and why; `label`
    None means the run's only model. `against` is the model that held the alias when the
    decision was made (`run_id/label`; None: no model did)."""

    label: str | None
    alias: str
    promoted: bool
    candidate_val_bpb: float | None
    champion_val_bpb: float | None
    reason: str
    decided_at: datetime
    against: str | None = None


@dataclass
class RunOutcome:
    """How a run ended and everything it produced: what `RunRegistry.finish_run` writes in one
    transaction. `metrics_file` is the run's JSONL metrics, bulk-loaded when it is recorded."""

    run_id: str
    status: str
    ended_at: datetime
    stages: list[StageRecord] = field(default_factory=list)
    datasets: list[DatasetRecord] = field(default_factory=list)
    corpus_digest: str | None = None
    metrics_file: Path | None = None
    error: str | None = None
    tokenizers: list[TokenizerRecord] = field(default_factory=list)
    models: list[ModelRecord] = field(default_factory=list)
    promotion: PromotionRecord | None = None  # a retrain's decision, recorded with the run

    def to_json(self) -> dict:
        """The outcome as JSON-able data: times as ISO text, the metrics file as a path."""
        data = asdict(self)
        data["ended_at"] = self.ended_at.isoformat()
        data["metrics_file"] = str(self.metrics_file) if self.metrics_file else None
        for stage in data["stages"]:
            finished = stage["finished_at"]
            stage["finished_at"] = finished.isoformat() if finished else None
        if self.promotion is not None:
            data["promotion"]["decided_at"] = self.promotion.decided_at.isoformat()
        return data

    @classmethod
    def from_json(cls, data: dict) -> RunOutcome:
        """The outcome `to_json` wrote; a missing or mistyped field raises KeyError, TypeError
        or ValueError."""
        stages = [
            StageRecord(**(stage | {"finished_at": _time_or_none(stage["finished_at"])}))
            for stage in data["stages"]
        ]
        return cls(
            run_id=data["run_id"],
            status=data["status"],
            ended_at=read_time(data["ended_at"]),
            stages=stages,
            datasets=[DatasetRecord(**dataset) for dataset in data["datasets"]],
            corpus_digest=data["corpus_digest"],
            metrics_file=Path(data["metrics_file"]) if data["metrics_file"] else None,
            error=data["error"],
            tokenizers=[TokenizerRecord(**tokenizer) for tokenizer in data["tokenizers"]],
            models=[ModelRecord(**model) for model in data["models"]],
            promotion=_promotion(data.get("promotion")),
        )


def _promotion(data: dict | None) -> PromotionRecord | None:
    if data is None:
        return None
    return PromotionRecord(**(data | {"decided_at": read_time(data["decided_at"])}))


def _time_or_none(text: str | None) -> datetime | None:
    return read_time(text) if text else None
