"""The base of every typed config: unknown keys are errors, a value of the wrong type is an
error rather than converted (`true` is not a learning rate of 1.0, nor "yes" a boolean; an
integer is still a valid float), so are TOML's `inf` and `nan` (an infinite learning rate or
weight decay passes every lower bound and fails only once training has diverged), instances are
immutable and have a stable digest (for cache keys)."""

from __future__ import annotations

import hashlib
import json

from pydantic import BaseModel, ConfigDict


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)

    def digest(self) -> str:
        """A stable digest of these settings, for cache keys."""
        canonical = json.dumps(self.model_dump(mode="json"), sort_keys=True)
        return hashlib.sha256(canonical.encode()).hexdigest()
