"""A retrain's promotion decision in one line, as `lmforge runs show` and the report give it."""

from __future__ import annotations


def promotion_text(
    promoted: bool,
    alias: str,
    candidate: float | None,
    champion: float | None,
    against: str | None,
    reason: str | None,
) -> str:
    """What the retrain did with the alias, the two val bits per byte (none where nothing was
    trained), the model it was compared with (`run_id/label`), and why."""
    scores = []
    if candidate is not None:
        against_champion = f" against the {alias}'s {champion:.4f}" if champion is not None else ""
        scores.append(f"candidate val bpb {candidate:.4f}{against_champion}")
    if against:
        scores.append(f"the {alias} was {against}")
    said = f"promoted to {alias}" if promoted else f"not promoted, the {alias} stays"
    shown = f" ({'; '.join(scores)})" if scores else ""
    return f"{said}{shown}: {reason or 'no reason recorded'}"
