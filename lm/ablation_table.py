"""An ablation's answer: per variant, mean ± standard deviation over seeds of val bits per byte
and of training tokens/s, and a line for every variant × seed that failed, saying why.

Plain data and its formatting, shared by the `ablation` flow (which writes `ablation.md`,
`ablation.json` and the Prefect artifacts) and the HTML report (which reads `ablation.json`),
so the page and the markdown file show the same figures to the same digits.
"""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass, field

TABLE_FILE = "ablation.md"
RESULTS_FILE = "ablation.json"
HEADER = ["variant", "seeds", "parameters", "val bits/byte (mean ± std)",
          "tokens/s (mean ± std)", "changes from the base"]  # fmt: skip
# The changes cell of the base's own row.
THE_BASE = "none (the base)"
FAILED = "failed"
# The standard deviation of one seed is not zero but unknown.
NO_SPREAD = "n/a"
ERROR_CHARACTERS = 400


@dataclass
class VariantResult:
    """The seeds of one variant that trained and were scored. `planned` counts its seeds in the
    config, failed ones included; the standard deviations are None with fewer than two
    results."""

    variant: str
    seeds: int
    planned: int
    val_bpb_mean: float
    val_bpb_std: float | None
    tokens_per_s_mean: float | None  # None: no seed trained in the seconds measured
    tokens_per_s_std: float | None
    parameters: int
    val_bpb_by_seed: dict[int, float]


@dataclass
class FailedArm:
    """One variant × seed that did not produce a score, and its error on one line."""

    variant: str
    seed: int
    error: str


@dataclass
class AblationTable:
    """Every variant that produced a score (best val bits per byte first), every variant × seed
    that failed (in the config's order), and the variants none of whose seeds finished."""

    results: list[VariantResult]
    failed: list[FailedArm] = field(default_factory=list)
    # Variant → how many seeds it was to train, for variants without any result.
    lost: dict[str, int] = field(default_factory=dict)
    # Variant → what it sets otherwise than the base (`mlp = "swiglu"`), "" for the base.
    changes: dict[str, str] = field(default_factory=dict)

    def rows(self) -> list[list[str]]:
        """The table's cells, formatted: the markdown file and the HTML report show these."""
        rows = []
        for r in self.results:
            seeds = str(r.seeds) if r.seeds == r.planned else f"{r.seeds} of {r.planned}"
            rows.append([
                r.variant,
                seeds,
                f"{r.parameters:,}",
                f"{r.val_bpb_mean:.4f} ± {_spread(r.val_bpb_std, '.4f')}",
                f"{r.tokens_per_s_mean:,.0f} ± {_spread(r.tokens_per_s_std, ',.0f')}"
                if r.tokens_per_s_mean is not None else NO_SPREAD,
                self._changes_of(r.variant),
            ])  # fmt: skip
        for variant, planned in self.lost.items():
            rows.append([variant, f"0 of {planned}", "—", FAILED, FAILED,
                         self._changes_of(variant)])  # fmt: skip
        return rows

    def _changes_of(self, variant: str) -> str:
        if variant not in self.changes:  # a table written before lmforge listed the changes
            return "—"
        return self.changes[variant] or THE_BASE

    def failure_lines(self) -> list[str]:
        return [f"{arm.variant}, seed {arm.seed}: {arm.error}" for arm in self.failed]

    def markdown(self) -> str:
        lines = ["| " + " | ".join(HEADER) + " |", "|---|---:|---:|---:|---:|---|"]
        lines += ["| " + " | ".join(row) + " |" for row in self.rows()]
        if self.failed:
            lines += ["", "Failed, left out of the means above:", ""]
            lines += [f"- {line}" for line in self.failure_lines()]
        return "\n".join(lines)

    def to_json(self) -> dict:
        return {
            "results": [asdict(r) for r in self.results],
            "failed": [asdict(arm) for arm in self.failed],
            "lost": self.lost,
            "changes": self.changes,
        }

    @classmethod
    def from_json(cls, document: dict) -> AblationTable:
        results = []
        for entry in document.get("results", []):
            by_seed = {int(seed): bpb for seed, bpb in entry["val_bpb_by_seed"].items()}
            results.append(VariantResult(**(entry | {"val_bpb_by_seed": by_seed})))
        failed = [FailedArm(**arm) for arm in document.get("failed", [])]
        return cls(
            results, failed, dict(document.get("lost", {})), dict(document.get("changes", {}))
        )


def _spread(value: float | None, spec: str) -> str:
    return NO_SPREAD if value is None else format(value, spec)


def one_line_error(error: BaseException) -> str:
    """`TrainingError: loss is nan at step 1: ...` on one line, cut to a readable length."""
    text = " ".join(f"{type(error).__name__}: {error}".split())
    if len(text) > ERROR_CHARACTERS:
        text = text[: ERROR_CHARACTERS - 1] + "…"
    return text


def _speed(stats: dict) -> float:
    """An arm's training tokens/s: over its steps after the first where recorded (the first
    holds the allocations and start-up that only the first arm a process trains pays for in
    full), else over the steps' own seconds (the stage's seconds held set-up, the baseline and
    evaluations, which weighed most on whichever arm came first)."""
    if stats.get("steady_tokens") and stats.get("steady_seconds"):
        return stats["steady_tokens"] / max(stats["steady_seconds"], 1e-9)
    return stats.get("tokens_this_run", stats["tokens_seen"]) / max(
        stats.get("step_seconds") or stats["seconds"], 1e-9
    )


def summarize(
    planned: list[tuple[str, int]],
    scored: list[tuple[str, int, dict]],
    failed: list[FailedArm],
    changes: dict[str, str] | None = None,
) -> AblationTable:
    """Mean and sample standard deviation over the seeds that finished, per variant, best val
    bits per byte first. `planned` is every (variant, seed) of the config, in its order;
    `scored` holds the train stats (`val_bpb`, `tokens_seen`, `seconds`, `parameters`, and
    `tokens_this_run` where recorded) of those that finished; `changes` says what each variant
    sets otherwise than the base."""
    planned_seeds: dict[str, int] = {}
    for variant, _ in planned:
        planned_seeds[variant] = planned_seeds.get(variant, 0) + 1
    by_variant: dict[str, list[tuple[int, dict]]] = {}
    for variant, seed, stats in scored:
        by_variant.setdefault(variant, []).append((seed, stats))
    results = []
    for variant, runs in by_variant.items():
        bpb = [stats["val_bpb"] for _, stats in runs]
        # A resumed seed's earlier tokens are not counted, and one resumed at its end, which
        # trained nothing here, has no speed to give.
        speed = [_speed(stats) for _, stats in runs if stats.get("tokens_this_run", 1) > 0]
        results.append(
            VariantResult(
                variant=variant,
                seeds=len(runs),
                planned=planned_seeds.get(variant, len(runs)),
                val_bpb_mean=statistics.fmean(bpb),
                val_bpb_std=statistics.stdev(bpb) if len(bpb) > 1 else None,
                tokens_per_s_mean=statistics.fmean(speed) if speed else None,
                tokens_per_s_std=statistics.stdev(speed) if len(speed) > 1 else None,
                parameters=int(runs[0][1]["parameters"]),
                val_bpb_by_seed={seed: stats["val_bpb"] for seed, stats in runs},
            )
        )
    results.sort(key=lambda result: result.val_bpb_mean)
    lost = {v: n for v, n in planned_seeds.items() if v not in by_variant}
    return AblationTable(results, failed, lost, dict(changes or {}))
