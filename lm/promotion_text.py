"""A retrain's promotion decision in one line, as `lmforge runs show` and the report give it."""

from __future__ import annotations


def promotion_text(decision: dict) -> str:
    """A `promotions` row in words: what the retrain did with the alias, the two val bits per
    byte (none where nothing was trained), the model it was compared with (`against`, absent
    from a registry before migration 6), and why."""
    alias, candidate, champion = (decision["alias"], decision["candidate_val_bpb"],
                                  decision["champion_val_bpb"])  # fmt: skip
    scores = []
    if candidate is not None:
        against_champion = f" against the {alias}'s {champion:.4f}" if champion is not None else ""
        scores.append(f"candidate val bpb {candidate:.4f}{against_champion}")
    if decision.get("against"):
        scores.append(f"the {alias} was {decision['against']}")
    said = f"promoted to {alias}" if decision["promoted"] else f"not promoted, the {alias} stays"
    shown = f" ({'; '.join(scores)})" if scores else ""
    return f"{said}{shown}: {decision['reason'] or 'no reason recorded'}"
