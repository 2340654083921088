"""Prefect flows that compose the stages, and the `lmforge` command line."""
