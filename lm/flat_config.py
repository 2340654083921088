"""A nested config flattened to one key per setting, so that two runs' configs can be compared
key by key: `runs compare` and the comparison report name the same keys."""

from __future__ import annotations

from typing import Any


def flatten_config(value: Any, prefix: str = "") -> dict[str, Any]:
    """A nested config as `section.key` → value; lists of tables by index (`sources[0].path`,
    `models[3].train.learning_rate`): compared whole, a ladder's `[[models]]` that differed in
    one key showed each run's entire list. A list of plain values stays one value."""
    if isinstance(value, dict):
        flat: dict[str, Any] = {}
        for key, item in value.items():
            flat |= flatten_config(item, f"{prefix}.{key}" if prefix else str(key))
        return flat
    if isinstance(value, list) and any(isinstance(item, dict | list) for item in value):
        flat = {}
        for index, item in enumerate(value):
            flat |= flatten_config(item, f"{prefix}[{index}]")
        return flat
    return {prefix: value}
