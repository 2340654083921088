"""The ladder bench's own settings for its GPT, and how a command-line `--set` replaces them."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

from lm.config import load_config

BENCH = Path(__file__).resolve().parent.parent / "bench" / "bench_ladder.py"


def load_bench():
    spec = importlib.util.spec_from_file_location("bench_ladder", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_a_command_line_set_replaces_the_bench_default_and_is_not_printed_as_one():
    bench = load_bench()
    defaults = bench.large_list_overrides("names")
    gpt = next(
        i for i, entry in enumerate(load_config("names").models) if entry.model.kind == "gpt"
    )
    assert f"models.{gpt}.n_layer=8" in defaults

    command_line = [f"models.{gpt}.n_layer = 12", f"models.{gpt}.train.seed=11"]
    kept = bench.not_overridden(defaults, command_line)
    assert f"models.{gpt}.n_layer=8" not in kept
    assert len(kept) == len(defaults) - 1  # the seed is not one of the bench's own settings

    runs = load_config("names", [*kept, *command_line]).model_runs()
    [run] = [run for run in runs if run.model.kind == "gpt"]
    assert (run.model.n_layer, run.train.seed) == (12, 11)
    assert run.model.dropout == bench.LARGE_LIST_GPT["dropout"]
    assert run.train.max_steps == bench.LARGE_LIST_GPT["train.max_steps"]
