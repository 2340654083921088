"""Prefect tasks: thin, cached wrappers over `lm/` and `storage/` that pass small descriptors."""
