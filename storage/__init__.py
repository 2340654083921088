"""Persistence: the workspace layout, the Parquet corpus store, the content-addressed artifact
store and the DuckDB run registry. Nothing here imports Prefect."""
