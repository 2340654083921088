"""A CPU training step reuses the memory the step before it freed (lm.allocator): no page fault
for every activation again. Each check runs in a fresh process, as the allocator's thresholds
are the whole process's."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from lm.allocator import OPT_OUT, _glibc, keep_freed_memory

REPO = Path(__file__).resolve().parent.parent

# Trains nanoGPT's CPU shape (2 of its 4 layers) eager in fp32 with the real Trainer and
# counts the page faults of 30 steps after 10 warm ones.
FAULTS_PER_STEP = textwrap.dedent("""
    import json, resource, tempfile
    from pathlib import Path
    import numpy as np, torch
    from lm.models.config import GPTConfig
    from lm.models.registry import build_model
    from lm.train import Trainer
    from lm.train_config import TrainConfig
    from lm.allocator import keep_freed_memory
    torch.set_num_threads(1)
    model = build_model(GPTConfig(block_size=64, n_layer=2, n_head=4, n_embd=128,
                                  pos="learned"), 65)
    settings = TrainConfig(max_steps=100, micro_batch=12, global_batch=12, block_size=64,
                           device="cpu", precision="fp32", compile=False, eval_every=100,
                           checkpoint_every=100, warmup_steps=0)
    tokens = np.random.default_rng(0).integers(0, 65, 50_000).astype(np.uint32)
    trainer = Trainer(model, settings, tokens, tokens, Path(tempfile.mkdtemp()))
    for _ in trainer.run_steps(10):
        pass
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in trainer.run_steps(40):
        pass
    after = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    print(json.dumps({"kept": keep_freed_memory(), "faults": (after - before) / 30}))
""")


def faults_per_step(env_extra: dict[str, str]) -> dict:
    env = {**os.environ, **env_extra}
    done = subprocess.run([sys.executable, "-c", FAULTS_PER_STEP], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(_glibc() is None, reason="glibc's malloc knobs")
def test_cpu_training_steps_reuse_freed_memory_instead_of_faulting_it_in_again():
    """Measured with glibc's own thresholds (LMFORGE_KEEP_FREED_MEMORY=0): 420 to 700 faults a
    step on this shape, for the MLP's 1.5 MB activations and their gradients; kept: 0 to 20."""
    kept = faults_per_step({OPT_OUT: "1"})
    assert kept["kept"] is True
    assert kept["faults"] < 60, f"{kept['faults']:.0f} page faults per step"


def test_the_allocator_is_left_alone_when_turned_off(monkeypatch):
    monkeypatch.setenv(OPT_OUT, "0")
    assert keep_freed_memory.__wrapped__() is False


FREED_AND_GIVEN_BACK = textwrap.dedent("""
    import gc, json, os, sys
    import pyarrow as pa
    from lm.allocator import gives_back_freed_memory, keep_freed_memory
    if sys.argv[1] == "after-training":
        keep_freed_memory()  # the thresholds a training in the same process raised
    def resident():
        return int(open(f"/proc/{os.getpid()}/statm").read().split()[1]) * os.sysconf("SC_PAGESIZE")
    @gives_back_freed_memory
    def stage():  # a data stage's batches: Python strings and an Arrow table of them
        texts = ["x" * 1000 + str(i) for i in range(150_000)]
        table = pa.table({"text": texts})
        del texts, table
        gc.collect()
        return resident()
    freed = stage()
    print(json.dumps({"freed": freed, "given_back": resident()}))
""")


@pytest.mark.skipif(_glibc() is None, reason="glibc's malloc_trim")
@pytest.mark.parametrize("allocator", ["as-is", "after-training"])
def test_a_data_stage_gives_back_what_it_freed(allocator):
    """glibc and Arrow's pool kept what the data stages had freed: a run trained on top of
    1.6 GB its ingest, clean and encode of one 100 MB file no longer used."""
    done = subprocess.run([sys.executable, "-c", FREED_AND_GIVEN_BACK, allocator], cwd=REPO,
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    memory = json.loads(done.stdout.strip().splitlines()[-1])
    assert memory["freed"] - memory["given_back"] > 200e6, memory  # of ~300 MB allocated


HEAP_BLOCKS = textwrap.dedent("""
    import gc, json, os
    import numpy as np
    from lm.allocator import gives_back_freed_memory, keep_freed_memory
    keep_freed_memory()  # as training raised them: a block of a MiB comes from the heap
    def resident():
        return int(open(f"/proc/{os.getpid()}/statm").read().split()[1]) * os.sysconf("SC_PAGESIZE")
    @gives_back_freed_memory
    def stage():
        arrays = [np.ones(2**20 // 8) for _ in range(300)]
        del arrays
        gc.collect()
        return resident()
    freed = stage()
    print(json.dumps({"freed": freed, "given_back": resident()}))
""")


@pytest.mark.skipif(_glibc() is None, reason="glibc's malloc_trim")
def test_blocks_a_stage_freed_into_the_heap_are_given_back_too():
    """Once training has raised the thresholds, a freed block of a MiB stays in glibc's heap
    until `malloc_trim`: the check above frees Python strings and an Arrow table, which the
    heap does not hold, and passed without it."""
    done = subprocess.run([sys.executable, "-c", HEAP_BLOCKS], cwd=REPO, capture_output=True,
                          text=True, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    memory = json.loads(done.stdout.strip().splitlines()[-1])
    assert memory["freed"] - memory["given_back"] > 200e6, memory  # of 315 MB allocated
