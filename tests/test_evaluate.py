"""Evaluation: bits per byte checked by hand against a real trained checkpoint, byte counting
that adds up to the text, the count-bigram baseline on the same windows, and the evaluate
stage's outputs."""

from __future__ import annotations

import json
import logging
import math
import re
import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lm.config import TokenizerConfig
from lm.eval_config import EvalConfig, SamplingConfig
from lm.evaluate import (
    CheckpointError,
    EvaluationError,
    TokenBytes,
    count_bigram_baseline,
    evaluate,
    evaluation_windows,
    load_trained,
    split_batches,
    strided_rows,
)
from lm.models.bigram_count import SMOOTHING_GRID, BigramCountModel, tuned_smoothing
from lm.models.config import BigramConfig, BigramCountConfig, GPTConfig, MLPConfig
from lm.models.registry import build_model
from lm.tokenizer import train_tokenizer
from lm.train_config import TrainConfig
from storage.artifacts import Descriptor
from storage.shards import ShardWriter
from storage.workspace import Workspace
from tests.helpers import prose, wait_until

EXTRA = " Déjà vu — a café, naïve and über.\n"
TRAIN_DOCS = [prose(i, 80) + EXTRA for i in range(40)]
VAL_DOCS = [prose(100 + i, 80) + EXTRA for i in range(6)]
EVAL = EvalConfig(
    batches=3, batch_size=4, seed=7, samples=2, prompts=["The river", ""],
    sampling=SamplingConfig(max_new_tokens=12, temperature=1.0, top_k=20, seed=11),
    device="cpu", precision="fp32",
)  # fmt: skip
WINDOW = 24


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """Tensors here are tiny: on a shared two-core machine a second intra-op thread only spins
    (measured: 100x slower greedy decoding under load)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def write_shard(path, tokenizer, documents) -> None:
    writer = ShardWriter(path, tokenizer.digest, tokenizer.eot_id, tokenizer.vocab_size)
    for text in documents:
        writer.write(tokenizer.encode(text), len(text.encode()))
    writer.close()


FIXTURE_MODEL = GPTConfig(block_size=WINDOW, n_layer=1, n_head=2, n_embd=32)
FIXTURE_TRAINING = TrainConfig(max_steps=12, micro_batch=8, global_batch=8, warmup_steps=2,
                               learning_rate=3e-3, eval_every=12, eval_batches=2,
                               checkpoint_every=12, device="cpu")  # fmt: skip


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """A real train artifact: a SentencePiece tokenizer and shards (test split empty, as with a
    test fraction of 0), and a tiny GPT trained through the train stage."""
    from tasks.train import train_task

    home = tmp_path_factory.mktemp("evaluate")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("LMFORGE_HOME", str(home))
        workspace = Workspace.from_env().ensure()
        settings = TokenizerConfig(kind="bpe", vocab_size=400, character_coverage=1.0)
        tokenizer = train_tokenizer(iter(TRAIN_DOCS), settings)
        tokenizer_folder = workspace.artifacts / "tokenizer" / "t"
        tokenizer_folder.mkdir(parents=True)
        tokenizer.save(tokenizer_folder)
        shard_folder = workspace.artifacts / "shards" / "s"
        shard_folder.mkdir(parents=True)
        for split, documents in (("train", TRAIN_DOCS), ("val", VAL_DOCS), ("test", [])):
            write_shard(shard_folder / f"{split}.bin", tokenizer, documents)
        tokenizer_d = Descriptor("tokenizer", "t", "artifacts/tokenizer/t", tokenizer.digest)
        shards_d = Descriptor("encode", "s", "artifacts/shards/s", "shards-digest")
        trained = train_task.fn(shards_d, tokenizer_d, FIXTURE_MODEL, FIXTURE_TRAINING)
    return home, trained, shards_d, tokenizer_d


def test_a_model_trained_already_is_said_to_be_reused(trained_run, monkeypatch, caplog):
    """A run whose training another run had finished (a scheduled run beside it) logged no
    line of training: its train task looked Completed, as if it had trained."""
    from storage.artifacts import take_reused
    from tasks.train import train_task

    home, trained, shards, tokenizer = trained_run
    monkeypatch.setenv("LMFORGE_HOME", str(home))
    logger = logging.getLogger("lm.train")  # Prefect's logging stops it before the root's
    logger.addHandler(caplog.handler)
    try:
        with caplog.at_level(logging.INFO, logger="lm.train"):
            again = train_task.fn(shards, tokenizer, FIXTURE_MODEL, FIXTURE_TRAINING)
    finally:
        logger.removeHandler(caplog.handler)
    assert again == trained and take_reused(trained.key)
    stage, digest = trained.key.rsplit("-", 1)  # the folder it is in, to 12 digest characters
    said = f"train: this model is trained already ({stage}-{digest[:12]}: 12 steps, val loss "
    assert said + f"{trained.stats['val_loss']:.4f}); using it" in caplog.text


@pytest.fixture
def evaluated(trained_run, monkeypatch):
    from tasks.evaluate import evaluate_task

    home, trained, shards, tokenizer = trained_run
    monkeypatch.setenv("LMFORGE_HOME", str(home))
    descriptor = evaluate_task.fn(trained, shards, tokenizer, EVAL)
    return home, trained, descriptor


def two_step_training(tmp_path, monkeypatch) -> tuple[Workspace, tuple]:
    """A workspace (`LMFORGE_HOME`) holding a char tokenizer and its shards, and the train
    task's arguments for two steps of the fixture model on them."""
    monkeypatch.setenv("LMFORGE_HOME", str(tmp_path))
    workspace = Workspace.from_env().ensure()
    tokenizer = train_tokenizer(iter(TRAIN_DOCS), TokenizerConfig(kind="char"))
    (workspace.artifacts / "tokenizer" / "t").mkdir(parents=True)
    tokenizer.save(workspace.artifacts / "tokenizer" / "t")
    (workspace.artifacts / "shards" / "s").mkdir(parents=True)
    for split, documents in (("train", TRAIN_DOCS), ("val", VAL_DOCS), ("test", [])):
        write_shard(workspace.artifacts / "shards" / "s" / f"{split}.bin", tokenizer, documents)
    shards = Descriptor("encode", "s", "artifacts/shards/s", "shards-digest")
    tokens = Descriptor("tokenizer", "t", "artifacts/tokenizer/t", tokenizer.digest)
    return workspace, (shards, tokens, FIXTURE_MODEL,
                       FIXTURE_TRAINING.model_copy(update={"max_steps": 2}))  # fmt: skip


def test_a_training_whose_other_trainer_ended_unfinished_says_it_trains_it(
    tmp_path, monkeypatch, caplog
):
    """A run waiting on another's training of the same model, which was killed: "waited 1 s
    for the other process", then "resumed from ... (step 30)", with no word of why."""
    import fcntl
    import threading

    from storage.prune import WORK_LOCK
    from tasks.train import train_key, train_store, train_task, work_folder

    workspace, arguments = two_step_training(tmp_path, monkeypatch)
    work = work_folder(train_store(workspace), train_key(*arguments))
    work.mkdir(parents=True)
    logger = logging.getLogger("lm.train")  # Prefect's logging stops it before the root's
    logger.addHandler(caplog.handler)
    trained = []
    try:
        with caplog.at_level(logging.INFO, "lm.train"):
            with open(work / WORK_LOCK, "a+") as other:
                fcntl.flock(other, fcntl.LOCK_EX)  # the other process's training, then its end
                waiter = threading.Thread(target=lambda: trained.append(train_task.fn(*arguments)))
                waiter.start()
                assert wait_until(lambda: "another process is training" in caplog.text, 30)
            waiter.join(timeout=120)
    finally:
        logger.removeHandler(caplog.handler)
    assert trained and trained[0].stats["steps"] == 2
    assert "train: the other process ended without finishing this model" in caplog.text


def test_a_training_another_process_finished_while_this_one_waited_is_used_not_trained_again(
    tmp_path, monkeypatch
):
    """Two runs of one model: the second waits on the first's lock, then must find the model
    the first published (not train it a second time over it) and leave no work folder behind,
    which `lmforge prune` listed as a training that never started."""
    import fcntl
    import threading

    from storage.artifacts import take_reused
    from storage.prune import WORK_LOCK
    from tasks.train import STAGE, train_key, train_store, train_task, work_folder

    workspace, arguments = two_step_training(tmp_path, monkeypatch)
    store = train_store(workspace)
    key = train_key(*arguments)
    work = work_folder(store, key)
    work.mkdir(parents=True)
    logger = logging.getLogger("lm.train")
    said: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: said.append(record.getMessage())
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    trained = []
    try:
        with open(work / WORK_LOCK, "a+") as other:
            fcntl.flock(other, fcntl.LOCK_EX)  # the other process's training, then its model
            waiter = threading.Thread(target=lambda: trained.append(train_task.fn(*arguments)))
            waiter.start()
            assert wait_until(lambda: any("another process is training" in s for s in said), 30)
            with store.build(key) as staging:
                published = store.describe(staging, STAGE, key, key,
                                           {"steps": 99, "val_loss": 1.5})  # fmt: skip
        waiter.join(timeout=120)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(logging.NOTSET)
    assert trained == [published] and take_reused(key)
    assert not work.exists()


def test_the_published_count_of_tokens_is_the_best_checkpoint_s_not_the_last_step_s(
    tmp_path, monkeypatch
):
    """The model's row scores `best/` and a continuation starts from it, so its
    `tokens_trained` must be what `best/` was trained on, even where training went on past it
    (here the val text is made of letters the train text rarely uses: the better the model
    fits the train text, the worse it scores them, so the best val loss comes first)."""
    from lm.checkpoints import INFO_FILE
    from tasks.train import train_task

    monkeypatch.setenv("LMFORGE_HOME", str(tmp_path))
    workspace = Workspace.from_env().ensure()
    tokenizer = train_tokenizer(iter(TRAIN_DOCS), TokenizerConfig(kind="char"))
    (workspace.artifacts / "tokenizer" / "t").mkdir(parents=True)
    tokenizer.save(workspace.artifacts / "tokenizer" / "t")
    shard_folder = workspace.artifacts / "shards" / "s"
    shard_folder.mkdir(parents=True)
    val_docs = ["éïü à—é " * 40] * 3
    for split, documents in (("train", TRAIN_DOCS), ("val", val_docs), ("test", [])):
        write_shard(shard_folder / f"{split}.bin", tokenizer, documents)
    trained = train_task.fn(
        Descriptor("encode", "s", "artifacts/shards/s", "shards-digest"),
        Descriptor("tokenizer", "t", "artifacts/tokenizer/t", tokenizer.digest),
        GPTConfig(block_size=WINDOW, n_layer=1, n_head=2, n_embd=32),
        TrainConfig(max_steps=16, micro_batch=8, global_batch=8, warmup_steps=2,
                    learning_rate=1e-2, eval_every=4, eval_batches=2, device="cpu"),
    )  # fmt: skip
    folder = workspace.resolve(trained.path)
    best, final = (json.loads((folder / n / INFO_FILE).read_text()) for n in ("best", "final"))
    assert best["step"] < final["step"] == 16, "the val loss should have been best before the end"
    assert final["tokens_trained"] == trained.stats["tokens_seen"] == 16 * 8 * WINDOW
    assert trained.stats["tokens_trained"] == best["tokens_trained"] == best["step"] * 8 * WINDOW
    # The model scored is `best/`'s, not the last step's; a checkpoint named is that one.
    weights = {name: torch.load(folder / name / "model.pt", weights_only=True)
               for name in ("best", "final")}  # fmt: skip
    assert any(not torch.equal(weights["best"][k], v) for k, v in weights["final"].items())
    for path, name in ((folder, "best"), (folder / "final", "final"), (folder / "best", "best")):
        state = load_trained(path)[0].state_dict()
        assert all(torch.equal(state[k], v) for k, v in weights[name].items()), (path, name)
    # Published without the optimizer's moments (twice the weights, read only to resume an
    # interrupted training): their checkpoint.json lists what they keep, and checks it whole.
    from lm.checkpoints import damage, digest_mismatch
    from lm.train import CHECKPOINT_FILES

    for name, info in (("best", best), ("final", final)):
        assert not (folder / name / "optimizer.pt").exists(), name
        assert set(info["files"]) == set(info["sha256"]) == {"model.pt", "state.pt"}, name
        assert damage(folder / name) is None, name
        assert digest_mismatch(folder / name, CHECKPOINT_FILES) is None, name
    with open(folder / "final" / "state.pt", "r+b") as state_file:  # still checked whole
        state_file.seek(-1, 2)
        last = state_file.read(1)
        state_file.seek(-1, 2)
        state_file.write(bytes([last[0] ^ 1]))
    assert "state.pt is not the file written" in digest_mismatch(folder / "final", ["state.pt"])


def test_the_published_count_falls_back_only_where_best_has_no_count(tmp_path):
    """No `best/`, or one written before checkpoints counted: the last step's count. A `best/`
    that records no count (its weights continued a checkpoint that did not count): None."""
    from lm.checkpoints import INFO_FILE
    from tasks.train import tokens_behind_best

    assert tokens_behind_best(tmp_path, 300) == 300
    (tmp_path / "best").mkdir()
    assert tokens_behind_best(tmp_path, 300) == 300
    for recorded, published in ((120, 120), (None, None)):
        (tmp_path / "best" / INFO_FILE).write_text(json.dumps({"tokens_trained": recorded}))
        assert tokens_behind_best(tmp_path, 300) == published


def bytes_by_decoding(tokenizer, previous: int, target: int, anchor: int) -> int:
    """The UTF-8 bytes a target token adds to the decoded text."""
    if target == tokenizer.eot_id:
        return 1  # the break between two documents
    if previous == tokenizer.eot_id:  # a document's first token, decoded as SentencePiece does
        return len(tokenizer.decode([target]).encode())
    return len(tokenizer.decode([anchor, target]).encode()) - len(tokenizer.decode([anchor]))


def test_bits_per_byte_matches_a_hand_computation(evaluated):
    """Every val token is predicted once: the bytes are the val text's plus one per document;
    the GPT's nats are summed window by window here, each window scoring only the targets the
    ones before it did not (at least half a window of context); the baseline's are the add-1
    count table's over every pair of neighbouring tokens."""
    home, trained, descriptor = evaluated
    metrics = json.loads((home / descriptor.path / "metrics.json").read_text())
    model, tokenizer = load_trained(home / trained.path)
    tokens = np.fromfile(home / "artifacts/shards/s/val.bin", dtype="<u2").astype(np.int64)
    stream = np.concatenate([[tokenizer.eot_id], tokens])  # the first token is predicted too
    anchor = next(i for i in range(tokenizer.vocab_size) if tokenizer.piece(i) == "e")
    train_tokens = np.fromfile(home / "artifacts/shards/s/train.bin", dtype="<u2").astype(int)
    smoothing = descriptor.stats["baseline_smoothing"]  # chosen on held-out train text
    assert smoothing == tuned_smoothing(train_tokens, tokenizer.vocab_size) < 1.0
    counts = np.full((tokenizer.vocab_size, tokenizer.vocab_size), smoothing)
    np.add.at(counts, (train_tokens[:-1], train_tokens[1:]), 1)
    bigram_log_probs = np.log(counts / counts.sum(axis=1, keepdims=True))
    targets = len(stream) - 1
    assert targets > 3 * WINDOW  # several windows
    nats, n_bytes, scored_until, start = 0.0, 0, 0, 0
    with torch.no_grad():
        while scored_until < targets:
            start = min(start, targets - WINDOW)
            x = torch.from_numpy(stream[start : start + WINDOW])
            y = stream[start + 1 : start + WINDOW + 1]
            log_probs = F.log_softmax(model(x[None])[0][0].double(), dim=-1)
            for offset in range(max(scored_until - start, 0), WINDOW):
                assert offset >= WINDOW // 2 or start == 0  # context kept
                nats -= log_probs[offset, y[offset]].item()
                assert not tokenizer.is_byte(int(y[offset]))  # every piece decodes alone
                n_bytes += bytes_by_decoding(tokenizer, int(x[offset]), int(y[offset]), anchor)
            scored_until, start = start + WINDOW, start + WINDOW - WINDOW // 2
    text_bytes = sum(len(document.encode()) for document in VAL_DOCS) + len(VAL_DOCS)
    assert n_bytes == text_bytes
    score = metrics["model"]["val"]
    assert score["tokens"] == len(tokens) and score["bytes"] == text_bytes
    assert score["bpb"] == pytest.approx(nats / math.log(2) / n_bytes, rel=1e-5)
    assert score["loss"] == pytest.approx(nats / len(tokens), rel=1e-5)
    assert score["ppl"] == pytest.approx(math.exp(nats / len(tokens)), rel=1e-5)
    assert score["bpb_se"] == pytest.approx(score["bpb_std"] / math.sqrt(
        math.ceil(targets / (WINDOW // 2) / EVAL.batch_size)), rel=0.2)  # fmt: skip
    baseline = metrics["baseline"]["val"]
    baseline_nats = -bigram_log_probs[stream[:-1], stream[1:]].sum()
    assert (baseline["tokens"], baseline["bytes"]) == (len(tokens), text_bytes)
    assert baseline["bpb"] == pytest.approx(baseline_nats / math.log(2) / n_bytes, rel=1e-6)


def test_evaluate_stage_skips_an_empty_split_and_stores_seeded_samples(evaluated):
    home, _, descriptor = evaluated
    metrics = json.loads((home / descriptor.path / "metrics.json").read_text())
    assert set(metrics["model"]) == set(metrics["baseline"]) == {"val"}  # test split is empty
    assert descriptor.stats["val_bpb"] == metrics["model"]["val"]["bpb"]
    assert descriptor.stats["baseline_val_bpb"] == metrics["baseline"]["val"]["bpb"]
    assert "test_bpb" not in descriptor.stats
    assert metrics["model"]["val"]["bpb_std"] > 0  # three batches of different windows
    samples = json.loads((home / descriptor.path / "samples.json").read_text())
    assert [(s["prompt"], s["seed"]) for s in samples] == [("The river", 11), ("", 12)]
    assert all(s["temperature"] == 1.0 and s["top_k"] == 20 for s in samples)
    assert all(s["text"] for s in samples)


def test_a_model_trained_on_documents_is_scored_on_documents(trained_run, monkeypatch):
    """`eval.scoring = "auto"` scores a model trained a document a row (`train.samples =
    "documents"`, the names preset) one document at a time, as it read them: scored as a model
    of windows, it was judged across document boundaries it never saw."""
    from tasks.evaluate import evaluate_task

    home, trained, shards, tokenizer = trained_run
    monkeypatch.setenv("LMFORGE_HOME", str(home))
    folder = home / "artifacts" / "train" / "on-documents"
    shutil.copytree(home / trained.path, folder)
    settings = json.loads((folder / "train.json").read_text()) | {"samples": "documents"}
    (folder / "train.json").write_text(json.dumps(settings))
    on_documents = Descriptor("train", "on-documents", "artifacts/train/on-documents",
                              "on-documents", trained.stats)  # fmt: skip
    scored = evaluate_task.fn(
        on_documents, shards, tokenizer, EVAL.model_copy(update={"samples": 0})
    )
    assert scored.stats["scoring"] == "documents"
    whole = evaluate_task.fn(trained, shards, tokenizer, EVAL.model_copy(update={"samples": 0}))
    assert whole.stats["scoring"] == "whole"


def test_a_baseline_smoothing_set_for_the_evaluation_is_the_one_scored(trained_run, monkeypatch):
    """`eval.baseline_smoothing` fixes the count-bigram baseline's add-k; dropped on its way
    to the baseline, the tuned value was scored under a key that named the one asked for."""
    from tasks.evaluate import evaluate_task

    home, trained, shards, tokenizer = trained_run
    monkeypatch.setenv("LMFORGE_HOME", str(home))
    fixed = EVAL.model_copy(update={"samples": 0, "baseline_smoothing": 0.5})
    assert evaluate_task.fn(trained, shards, tokenizer, fixed).stats["baseline_smoothing"] == 0.5


def test_a_model_is_not_scored_on_shards_of_another_tokenizer(trained_run, monkeypatch):
    """Token ids mean what the model's tokenizer says: shards of another tokenizer were scored
    as if they were its text (bits per byte of nonsense, said as the model's)."""
    from lm.tokenizer import TokenizerError
    from tasks.evaluate import evaluate_task

    home, trained, shards, tokenizer = trained_run
    monkeypatch.setenv("LMFORGE_HOME", str(home))
    other = Descriptor("tokenizer", "t", tokenizer.path, "another-tokenizer")
    with pytest.raises(TokenizerError, match="the model's tokenizer has digest"):
        evaluate_task.fn(trained, shards, other, EVAL.model_copy(update={"samples": 0}))


def test_evaluation_is_cached_and_reproducible(trained_run, evaluated):
    from storage.artifacts import take_reused
    from tasks.evaluate import evaluate_task

    home, trained, shards, tokenizer = trained_run
    first = evaluated[2]
    folder = home / first.path
    metrics = (folder / "metrics.json").read_text()
    samples = (folder / "samples.json").read_text()
    take_reused(first.key)  # the first evaluation's own mark, if any
    assert evaluate_task.fn(trained, shards, tokenizer, EVAL) == first  # served from its folder
    assert take_reused(first.key)  # found, not scored again (which wrote the same files)
    shutil.rmtree(folder)
    shutil.rmtree(home / "artifacts" / "scores")  # scored again, not read back
    again = evaluate_task.fn(trained, shards, tokenizer, EVAL)
    assert (home / again.path / "metrics.json").read_text() == metrics
    assert (home / again.path / "samples.json").read_text() == samples


def test_new_sampling_settings_draw_new_samples_without_scoring_again(
    trained_run, evaluated, monkeypatch
):
    """The scores do not depend on the samples' settings: a new temperature reused them (it
    scored every split again, minutes on a large one); a new window scores again."""
    from tasks.evaluate import evaluate_task

    home, trained, shards, tokenizer = trained_run
    first = evaluated[2]
    hotter = EVAL.model_copy(update={"sampling": EVAL.sampling.model_copy(
        update={"temperature": 1.5})})  # fmt: skip

    def no_scoring(*args, **kwargs):
        raise AssertionError("scored again")

    monkeypatch.setattr("lm.evaluate.score_windows", no_scoring)
    again = evaluate_task.fn(trained, shards, tokenizer, hotter)
    assert again.key != first.key
    assert (home / again.path / "metrics.json").read_text() == (
        home / first.path / "metrics.json").read_text()  # fmt: skip
    assert (home / again.path / "samples.json").read_text() != (
        home / first.path / "samples.json").read_text()  # fmt: skip
    assert {k: v for k, v in again.stats.items() if k not in ("seconds", "samples")} == {
        k: v for k, v in first.stats.items() if k not in ("seconds", "samples")}  # fmt: skip
    with pytest.raises(AssertionError, match="scored again"):
        evaluate_task.fn(trained, shards, tokenizer, EVAL.model_copy(update={"window": 8}))


def test_a_common_window_is_used_when_set_and_refused_past_a_gpts_context(trained_run, monkeypatch):
    from tasks.evaluate import evaluate_task

    home, trained, shards, tokenizer = trained_run
    monkeypatch.setenv("LMFORGE_HOME", str(home))
    short = EVAL.model_copy(update={"window": 10, "samples": 0})
    descriptor = evaluate_task.fn(trained, shards, tokenizer, short)
    assert (descriptor.stats["window"], descriptor.stats["scoring"]) == (10, "whole")
    val_tokens = len(np.fromfile(home / "artifacts/shards/s/val.bin", dtype="<u2"))
    assert descriptor.stats["val_tokens"] == val_tokens  # every token, whatever the window
    sampled = evaluate_task.fn(trained, shards, tokenizer,
                               short.model_copy(update={"scoring": "sample"}))  # fmt: skip
    assert sampled.stats["val_tokens"] == EVAL.batches * EVAL.batch_size * 10
    with pytest.raises(EvaluationError, match=r"eval\.window 25 is longer than the context"):
        evaluate_task.fn(trained, shards, tokenizer, short.model_copy(update={"window": 25}))


def test_token_bytes_of_a_shard_add_up_to_its_text_bytes_plus_one_per_document(tmp_path):
    """Byte-fallback pieces, multi-byte characters, the dummy prefix, end-of-text and a
    literal "▁" (SentencePiece's space mark) and its escape all counted: every token of a shard
    together stands for exactly its text."""
    escape = "\U000f0000"  # lm.tokenizer.SPACE_SYMBOL_ESCAPE
    literal_marks = ["▁", "a▁ ▁b", "▁ leading mark", f"{escape}_ {escape}{escape}▁", escape]
    documents = [*TRAIN_DOCS[:10], "日本語 and ü", "  two leading spaces", "x", *literal_marks]
    cases = {
        "bpe": TokenizerConfig(kind="bpe", vocab_size=400),  # 日本語 only through byte fallback
        "unigram": TokenizerConfig(kind="unigram", vocab_size=400),
        "char": TokenizerConfig(kind="char", unknown_chars="bytes"),
    }
    for name, settings in cases.items():
        tokenizer = train_tokenizer(iter(TRAIN_DOCS), settings)
        write_shard(tmp_path / f"{name}.bin", tokenizer, documents)
        stream = torch.from_numpy(np.fromfile(tmp_path / f"{name}.bin", dtype="<u2").astype(int))
        table = TokenBytes.of(tokenizer)
        first = int(table.of_targets(torch.tensor([tokenizer.eot_id]), stream[:1]).sum())
        total = first + int(table.of_targets(stream[:-1], stream[1:]).sum())
        expected = sum(len(text.encode()) for text in documents) + len(documents)
        assert total == expected, name


def test_a_document_start_longer_than_a_chunk_counts_every_byte(monkeypatch):
    """An ordered split cuts one long document (millions of ids), summed a chunk at a time:
    every chunk counted whole, the dummy prefix taken off once."""
    import lm.token_bytes
    from lm.token_bytes import PieceBytes

    text = "Déjà vu — a café, naïve and über. " * 3
    for settings in (TokenizerConfig(kind="char"), TokenizerConfig(kind="bpe", vocab_size=400)):
        tokenizer = train_tokenizer(iter(TRAIN_DOCS), settings)
        ids = np.array(tokenizer.encode(text))
        table = PieceBytes.of(tokenizer)
        monkeypatch.setattr(lm.token_bytes, "CHUNK", 3)
        assert table.of_document_start(ids) == len(text.encode()), settings.kind
        monkeypatch.undo()


def test_unknown_tokens_are_counted_and_the_stage_warns_of_them(tmp_path, caplog):
    """A character tokenizer's `<unk>` stands for one character of 1 to 4 bytes, SentencePiece's
    without byte fallback for a run of them. Each counts 1 byte, the least it could be, yet its
    model is flattered anyway (it predicts one cheap `<unk>`): the scores say how many there
    are, and the evaluate stage warns that such bits per byte compare only within a tokenizer."""
    from tasks.evaluate import _warn_of_unknown_tokens

    documents = [*VAL_DOCS[:3], "日本語テキスト and ü", "€ 5 — 東京"]  # characters train lacks
    text_bytes = sum(len(text.encode()) for text in documents) + len(documents)
    cases = {
        "char": TokenizerConfig(kind="char", unknown_chars="unk"),
        "bpe": TokenizerConfig(kind="bpe", vocab_size=400, byte_fallback=False),
        "bpe-fallback": TokenizerConfig(kind="bpe", vocab_size=400),
    }
    for name, settings in cases.items():
        tokenizer = train_tokenizer(iter(TRAIN_DOCS), settings)
        write_shard(tmp_path / f"{name}.bin", tokenizer, documents)
        tokens = np.fromfile(tmp_path / f"{name}.bin", dtype="<u2")
        unknown = [i for i in range(tokenizer.vocab_size) if tokenizer.piece(i) == "<unk>"]
        expected = int(np.isin(tokens, unknown).sum())
        model = BigramCountModel(BigramCountConfig(), tokenizer.vocab_size)
        model.fit(torch.from_numpy(tokens.astype(np.int64)))
        score = evaluate(model, tokens, tokenizer, EVAL, window=32)
        assert score.unknown_tokens == expected, name
        assert (expected > 0) == (name != "bpe-fallback"), name
        # Each <unk> 1 byte: short of the text by the rest of the bytes it replaced.
        assert (score.bytes == text_bytes) == (name == "bpe-fallback"), name
        assert score.bytes <= text_bytes, name
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="lm.evaluate"):
            _warn_of_unknown_tokens("val", score.as_dict())
        warned = f"evaluate val: {expected} of the {score.tokens} tokens scored are <unk>"
        assert (warned in caplog.text) == (expected > 0), name


def test_a_character_tokenizer_without_the_letter_a_gets_a_byte_table():
    """Only SentencePiece adds a dummy prefix; measuring it must not encode text that another
    tokenizer may refuse (no 'a' among its characters, unknown characters an error)."""
    settings = TokenizerConfig(kind="char", unknown_chars="error")
    tokenizer = train_tokenizer(iter(["xyz zyx", "yes, oh yes"]), settings)
    table = TokenBytes.of(tokenizer)
    assert table.dummy_prefix == 0 and int(table.lengths.sum()) == tokenizer.vocab_size


@pytest.mark.parametrize(("window", "overlap"), [(32, -5), (32, 32), (32, 40), (0, None), (-4, 0)])
def test_a_window_or_overlap_that_cannot_score_every_target_once_is_refused(window, overlap):
    # A negative overlap strode past targets (1735 of 2000 scored, a bpb of part of the split);
    # a window of 0 failed naming bytes; an overlap of the window or more strode by one token.
    tokenizer = train_tokenizer(iter(TRAIN_DOCS[:5]), TokenizerConfig(kind="char"))
    tokens = np.array([*tokenizer.encode(TRAIN_DOCS[0]), tokenizer.eot_id], dtype=np.uint16)
    model = BigramCountModel(BigramCountConfig(), tokenizer.vocab_size)
    model.fit(torch.from_numpy(tokens.astype(np.int64)))
    whole = EVAL.model_copy(update={"scoring": "whole"})
    with pytest.raises(EvaluationError, match=f"window {window} and overlap {overlap}: the"):
        evaluate(model, tokens, tokenizer, whole, window=window, overlap=overlap)
    assert evaluate(model, tokens, tokenizer, whole, window=32, overlap=31).tokens == len(tokens)


def test_char_model_bits_per_byte_on_ascii_is_loss_over_ln2():
    tokenizer = train_tokenizer(iter(TRAIN_DOCS[:5]), TokenizerConfig(kind="char"))
    ascii_text = "\n".join(prose(i, 60) for i in range(5))
    tokens = np.array([*tokenizer.encode(ascii_text), tokenizer.eot_id], dtype=np.uint16)
    model = BigramCountModel(BigramCountConfig(), tokenizer.vocab_size)
    model.fit(torch.from_numpy(tokens.astype(np.int64)))
    score = evaluate(model, tokens, tokenizer, EVAL, window=32)
    assert score.bytes == score.tokens
    assert score.bpb == pytest.approx(score.loss / math.log(2), rel=1e-12)


def test_every_model_kind_is_scored_on_the_same_windows():
    tokenizer = train_tokenizer(iter(TRAIN_DOCS[:5]), TokenizerConfig(kind="char"))
    tokens = np.array(tokenizer.encode(" ".join(TRAIN_DOCS[:5])), dtype=np.uint16)
    vocab = tokenizer.vocab_size
    torch.manual_seed(0)
    configs = [BigramCountConfig(), BigramConfig(), MLPConfig(context=3),
               GPTConfig(block_size=16, n_layer=1, n_head=2, n_embd=16)]  # fmt: skip
    scores = {c.kind: evaluate(build_model(c, vocab), tokens, tokenizer, EVAL, window=16)
              for c in configs}  # fmt: skip
    assert len({(s.tokens, s.bytes) for s in scores.values()}) == 1
    # The neural bigram starts uniform: exactly ln(vocab) nats per token; the empty count
    # table with add-1 smoothing is uniform too.
    assert scores["bigram"].loss == pytest.approx(math.log(vocab), rel=1e-6)
    assert scores["bigram-count"].loss == pytest.approx(math.log(vocab), rel=1e-6)
    assert scores["bigram"].loss_std == pytest.approx(0.0, abs=1e-6)


def test_the_baseline_scores_exactly_as_the_count_bigram_it_holds():
    tokenizer = train_tokenizer(iter(TRAIN_DOCS[:5]), TokenizerConfig(kind="char"))
    tokens = np.array(tokenizer.encode(" ".join(TRAIN_DOCS[:5])), dtype=np.uint16)
    counts = BigramCountModel(BigramCountConfig(smoothing=1.0), tokenizer.vocab_size)
    counts.fit(torch.from_numpy(tokens.astype(np.int64)))
    baseline = count_bigram_baseline(tokens, tokenizer.vocab_size, smoothing=1.0)
    expected = evaluate(counts, tokens, tokenizer, EVAL, window=16)
    assert evaluate(baseline, tokens, tokenizer, EVAL, window=16) == expected


def test_the_baseline_smoothing_is_the_grid_value_that_predicts_held_out_train_text_best():
    settings = TokenizerConfig(kind="bpe", vocab_size=400, character_coverage=1.0)
    tokenizer = train_tokenizer(iter(TRAIN_DOCS), settings)
    vocab = tokenizer.vocab_size
    train = np.concatenate([[*tokenizer.encode(d), tokenizer.eot_id] for d in TRAIN_DOCS])
    cut = int(len(train) * 0.9)
    fitted = BigramCountModel(BigramCountConfig(), vocab).fit(torch.from_numpy(train[:cut]))
    held_out = torch.from_numpy(train[cut - 1 :])

    def dense_nll(k: float) -> float:  # the whole table, by hand
        table = fitted.dense_counts() + k
        log_probs = (table / table.sum(dim=1, keepdim=True)).log()
        return -log_probs[held_out[:-1], held_out[1:]].mean().item()

    chosen = tuned_smoothing(train, vocab)
    assert chosen == min(SMOOTHING_GRID, key=dense_nll) and chosen < 1.0
    # Fitted on all of train, it scores unseen val text better than add-1.
    val = np.concatenate([[*tokenizer.encode(d), tokenizer.eot_id] for d in VAL_DOCS])
    tuned, add_one = (evaluate(count_bigram_baseline(train, vocab, k), val, tokenizer, EVAL)
                      for k in (None, 1.0))  # fmt: skip
    assert tuned.bpb < add_one.bpb


def test_bf16_autocast_scores_close_to_fp32():
    tokenizer = train_tokenizer(iter(TRAIN_DOCS[:5]), TokenizerConfig(kind="char"))
    tokens = np.array(tokenizer.encode(" ".join(TRAIN_DOCS[:5])), dtype=np.uint16)
    torch.manual_seed(0)
    model = build_model(GPTConfig(block_size=16, n_layer=1, n_head=2, n_embd=16),
                        tokenizer.vocab_size)  # fmt: skip
    fp32 = evaluate(model, tokens, tokenizer, EVAL)
    bf16 = evaluate(model, tokens, tokenizer, EVAL.model_copy(update={"precision": "bf16"}))
    assert bf16.bytes == fp32.bytes
    assert bf16.bpb == pytest.approx(fp32.bpb, rel=0.02)
    assert bf16.bpb != fp32.bpb  # the autocast really ran


# A split of `window` tokens holds `window - 1` targets, one short of a window: it is scored
# whole, as a shorter one is, not refused as too short for its block.
@pytest.mark.parametrize(("length", "window"), [(10, 64), (8, 8)])
def test_a_split_no_longer_than_a_window_is_scored_whole(length, window):
    tokens = np.arange(length, dtype=np.uint16)
    windows = evaluation_windows(tokens, window, batches=2, batch_size=3, seed=0, split="val")
    assert len(windows) == 1
    x, y = windows[0]
    assert x.tolist() == [list(range(length - 1))] and y.tolist() == [list(range(1, length))]


def test_a_split_just_longer_than_a_window_and_its_context_is_sampled_after_that_context():
    """With a fixed context's `history`, a split is one window only at `window + history`
    tokens or fewer (said so, not "fewer than a window of 11" for a window of 8), and one
    token more gives sampled windows whose first `history` targets are context, not scored."""
    from lm.batches import IGNORED_TARGET
    from tests.helpers import warnings_said_by

    [(x, y)] = evaluation_windows(np.arange(12), 8, 1, 2, seed=0, split="val", history=3)
    assert x.tolist() == [list(range(11))] * 2
    assert (y[:, :3] == IGNORED_TARGET).all() and y[:, 3:].tolist() == [list(range(4, 12))] * 2
    with warnings_said_by("lm.evaluate") as said:
        [(x, y)] = evaluation_windows(np.arange(11), 8, 1, 2, seed=0, split="val", history=3)
    assert x.tolist() == [list(range(10))] and y.tolist() == [list(range(1, 11))]
    assert said == [
        "evaluate: the val split has 11 tokens, not more than a window of 8 and the 3 tokens of "
        "context before it: scoring it whole, as one window"
    ]


def test_a_split_with_nothing_to_predict_is_refused_naming_it():
    with pytest.raises(EvaluationError, match="the test split has 1 token"):
        evaluation_windows(np.zeros(1, dtype=np.uint16), 8, 2, 2, seed=0, split="test")
    model = build_model(BigramConfig(), 5)
    with pytest.raises(EvaluationError, match="the val split has 0 token"):
        split_batches(model, np.zeros(0, dtype=np.uint16), EVAL, 4, 8, "val")


@pytest.mark.parametrize(("length", "window", "overlap"),
                         [(1, 8, 4), (7, 8, 4), (8, 8, 4), (9, 8, 4), (100, 8, 4), (100, 8, 0),
                          (100, 8, 7), (50, 16, 2)])  # fmt: skip
def test_strided_rows_predict_every_token_once_with_the_overlap_as_context(length, window, overlap):
    stream = np.arange(length + 1) + 1000
    seen: list[int] = []
    for inputs, targets in strided_rows(stream, window, overlap):
        assert len(inputs) == len(targets) == min(window, length)
        assert np.array_equal(inputs[1:], np.where(targets[:-1] >= 0, targets[:-1], inputs[1:]))
        for position in np.flatnonzero(targets != -100):
            assert targets[position] == inputs[position] + 1  # the next token of the stream
            assert position >= overlap or inputs[0] == stream[0]  # context, but at the start
            seen.append(int(targets[position]))
    assert seen == stream[1:].tolist()


def test_progress_counts_the_targets_scored_not_the_overlapping_positions(caplog):
    """Rows overlap by half a window (a GPT's default): the progress line counts each target
    once, as the score does, not the context positions the rows repeat."""
    tokenizer = train_tokenizer(iter(TRAIN_DOCS[:5]), TokenizerConfig(kind="char"))
    tokens = np.array(tokenizer.encode(" ".join(TRAIN_DOCS[:5])), dtype=np.uint16)
    torch.manual_seed(0)
    model = build_model(GPTConfig(block_size=16, n_layer=1, n_head=2, n_embd=16),
                        tokenizer.vocab_size)  # fmt: skip
    rows = split_batches(model, tokens, EVAL, tokenizer.eot_id, 16, "val")
    assert sum(y.numel() for _, y in rows) > 1.5 * len(tokens)  # positions: about twice
    with caplog.at_level(logging.INFO, logger="lm.progress"):
        score = evaluate(model, tokens, tokenizer, EVAL, window=16)
    assert score.tokens == len(tokens)
    done = f"{score.tokens:,} tokens / {score.tokens:,} tokens (100%)"
    assert done in caplog.records[-1].getMessage()


def test_fixed_context_models_score_the_same_on_any_window():
    """The MLP reads only its context, and windows overlap by context - 1: no target ever
    sees made-up context, so the window length cannot change a single score."""
    tokenizer = train_tokenizer(iter(TRAIN_DOCS[:5]), TokenizerConfig(kind="char"))
    tokens = np.array([*tokenizer.encode(" ".join(TRAIN_DOCS[:5])), tokenizer.eot_id],
                      dtype=np.uint16)  # fmt: skip
    torch.manual_seed(0)
    mlp = build_model(MLPConfig(context=4, n_embd=8, hiddens=[32]), tokenizer.vocab_size)
    with torch.no_grad():  # not the near-uniform start: scores that differ by context
        mlp.head.weight.normal_()
    short, long = (evaluate(mlp, tokens, tokenizer, EVAL, window=w) for w in (8, len(tokens)))
    assert short.tokens == long.tokens == len(tokens)
    assert short.bpb == pytest.approx(long.bpb, rel=1e-9)


def test_documents_scoring_scores_each_document_alone_from_its_start_mark():
    tokenizer = train_tokenizer(iter(TRAIN_DOCS[:5]), TokenizerConfig(kind="char"))
    names = ["anna", "bob", "christopher", "dee", "eve", "al"]
    eot = tokenizer.eot_id
    tokens = np.array([t for n in names for t in [*tokenizer.encode(n), eot]], dtype=np.uint16)
    torch.manual_seed(0)
    gpt = build_model(GPTConfig(block_size=16, n_layer=1, n_head=2, n_embd=16),
                      tokenizer.vocab_size).eval()  # fmt: skip
    nats = 0.0
    with torch.no_grad():
        for name in names:
            ids = tokenizer.encode(name)
            x = torch.tensor([[eot, *ids]])
            log_probs = F.log_softmax(gpt(x)[0][0].double(), dim=-1)
            nats -= sum(log_probs[i, t].item() for i, t in enumerate([*ids, eot]))
    documents = EVAL.model_copy(update={"scoring": "documents"})
    score = evaluate(gpt, tokens, tokenizer, documents)
    assert score.tokens == len(tokens) and score.bytes == sum(len(n) + 1 for n in names)
    assert score.loss == pytest.approx(nats / len(tokens), rel=1e-5)
    auto = evaluate(gpt, tokens, tokenizer, EVAL, per_document=True)
    assert auto == score  # a model trained on documents is scored on them by default
    whole = evaluate(gpt, tokens, tokenizer, EVAL)
    assert whole.tokens == score.tokens and whole.loss != pytest.approx(score.loss, rel=1e-6)
    # A bigram reads one token back: alone or in the stream, a document starts after the mark.
    bigram = count_bigram_baseline(tokens, tokenizer.vocab_size)
    assert evaluate(bigram, tokens, tokenizer, documents).loss == pytest.approx(
        evaluate(bigram, tokens, tokenizer, EVAL).loss, rel=1e-9)  # fmt: skip


def test_documents_scoring_scores_a_last_document_without_its_end_mark():
    """An ordered split can end inside a document: its tail has no end-of-text, and is a
    document all the same, every token of it scored, as `whole` scores it."""
    tokenizer = train_tokenizer(iter(TRAIN_DOCS[:5]), TokenizerConfig(kind="char"))
    eot = tokenizer.eot_id
    tokens = np.array([*tokenizer.encode("anna"), eot, *tokenizer.encode("bob")], dtype=np.uint16)
    bigram = count_bigram_baseline(tokens, tokenizer.vocab_size, smoothing=1.0)
    documents = EVAL.model_copy(update={"scoring": "documents"})
    score = evaluate(bigram, tokens, tokenizer, documents)
    assert (score.tokens, score.bytes) == (len(tokens), len("anna") + 1 + len("bob"))
    assert score == evaluate(
        bigram, tokens, tokenizer, EVAL.model_copy(update={"scoring": "whole"})
    )


def test_a_split_of_one_token_is_scored_whole_after_its_start_mark():
    # `whole` scoring predicts the first token too, after an end-of-text: one token is one
    # target (only a sample needs two tokens, for a window of one target).
    tokenizer = train_tokenizer(iter(TRAIN_DOCS[:5]), TokenizerConfig(kind="char"))
    tokens = np.array([tokenizer.eot_id], dtype=np.uint16)
    bigram = count_bigram_baseline(tokens, tokenizer.vocab_size, smoothing=1.0)
    score = evaluate(bigram, tokens, tokenizer, EVAL.model_copy(update={"scoring": "whole"}))
    assert (score.tokens, score.bytes) == (1, 1)
    assert score.loss == pytest.approx(math.log(tokenizer.vocab_size))


def test_evaluate_leaves_the_model_in_the_mode_it_found_it():
    """A loaded model is in eval mode: scoring it must not switch on its dropout and
    stochastic depth for what comes next (samples, another split); a model in training, as
    the trainer's periodic evaluation finds it, goes back to training."""
    tokenizer = train_tokenizer(iter(TRAIN_DOCS[:5]), TokenizerConfig(kind="char"))
    tokens = np.array(tokenizer.encode(TRAIN_DOCS[0][:200]), dtype=np.uint16)
    model = build_model(GPTConfig(block_size=16, n_layer=1, n_head=2, n_embd=16, dropout=0.1),
                        tokenizer.vocab_size)  # fmt: skip
    for training in (False, True):
        model.train(training)
        evaluate(model, tokens, tokenizer, EVAL)
        assert all(m.training == training for m in model.modules())


def test_auto_precision_is_bf16_on_cuda_only():
    """`auto` (the default) scores in fp32 on the CPU, where bf16 autocast is slower and
    rounds the bits per byte; bf16 where asked, or on CUDA."""
    from lm.evaluate import autocast_dtype

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert autocast_dtype("auto", cpu) is None and autocast_dtype("fp32", cuda) is None
    assert autocast_dtype("auto", cuda) == autocast_dtype("bf16", cpu) == torch.bfloat16


def test_a_folder_without_a_checkpoint_is_a_clear_error(trained_run, tmp_path):
    home, trained, _, _ = trained_run
    folder = tmp_path / "model"
    shutil.copytree(home / trained.path, folder, ignore=shutil.ignore_patterns("best", "final"))
    with pytest.raises(CheckpointError, match=re.escape(f"{folder}: no complete checkpoint")):
        load_trained(folder)
    with pytest.raises(CheckpointError, match=r"no model\.json"):
        load_trained(tmp_path)


def test_a_folder_named_by_a_string_path_loads(trained_run):
    """A notebook names folders by strings: `str / "model.json"` was a TypeError."""
    home, trained, _, _ = trained_run
    model, tokenizer = load_trained(str(home / trained.path))
    assert tokenizer.digest == load_trained(home / trained.path)[1].digest
    assert model.num_params() > 0


def test_tokens_that_are_not_a_1d_array_of_ids_are_refused_clearly(trained_run):
    """From Python: a text, or ids in 2-D, was numpy's "all the input arrays must have same
    number of dimensions"; floats were cut to integers silently."""
    home, trained, _, _ = trained_run
    model, tokenizer = load_trained(home / trained.path)
    for wrong in ("the text", np.zeros((2, 8), dtype=np.int64), np.ones(8) * 1.5):
        with pytest.raises(ValueError, match="evaluate takes a 1-D array of token ids"):
            evaluate(model, wrong, tokenizer, EVAL)


def test_a_checkpoint_folder_loads_its_own_weights_with_the_folder_around_it(trained_run, tmp_path):
    """`lmforge generate …/final` said "not a trained model folder (no model.json)"."""
    home, trained, _, _ = trained_run
    folder = tmp_path / "model"
    shutil.copytree(home / trained.path, folder)
    final = torch.load(folder / "final" / "model.pt", weights_only=True)
    (folder / "best" / "model.pt").write_bytes(b"")  # so `final` must be the one loaded
    model, _ = load_trained(folder / "final")
    assert all(torch.equal(model.state_dict()[k], v) for k, v in final.items())
    (folder / "final" / "DONE").unlink()
    with pytest.raises(CheckpointError, match=r"final: not a complete checkpoint"):
        load_trained(folder / "final")


def test_a_fixed_context_model_keeps_its_whole_context_in_any_window():
    # An MLP reading 8 tokens, scored in windows of 4 or 2: its targets after a window's
    # first read padding for the context the window could not hold (2.4196 and 2.4372 nats
    # against 2.4230 for any window of 8 or more).
    from lm.models.mlp import MLPModel
    from lm.tokenizer import CharTokenizer

    torch.manual_seed(0)
    tokenizer = CharTokenizer(list("abcdefgh "), "unk")
    model = MLPModel(MLPConfig(context=8, n_embd=4, hiddens=[16]), tokenizer.vocab_size,
                     pad_id=tokenizer.eot_id)  # fmt: skip
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.mul_(30)  # sharp predictions: context that is cut short shows
    stream = [*np.random.default_rng(0).integers(0, 9, 500).tolist(), tokenizer.eot_id]
    tokens = np.array(stream, dtype=np.uint16)
    scores = {window: evaluate(model, tokens, tokenizer, EvalConfig(scoring="whole"),
                               window=window) for window in (256, 8, 4, 2)}  # fmt: skip
    assert len({score.tokens for score in scores.values()}) == 1
    assert len({round(score.loss, 9) for score in scores.values()}) == 1


def test_sampled_windows_give_a_fixed_context_model_the_text_before_them():
    """`sample` scoring drew windows without the context before them: an MLP trained as the
    trainer trains it (each window after `context - 1` tokens of history) read padding for
    the text before every window: 1.25 bits per byte at a window of 8 where `whole` scoring
    gave under 0.05, and the score moved with eval.window."""
    from lm.batches import TokenBatches
    from lm.models.mlp import MLPModel
    from lm.tokenizer import CharTokenizer

    torch.manual_seed(0)
    tokenizer = CharTokenizer(list("abcdefgh"), "unk")
    sequence = list(np.random.default_rng(0).integers(0, 8, 4))
    while len(sequence) < 5000:  # each token the one 4 back plus 1: only the context tells
        sequence.append((sequence[-4] + 1) % 8)
    tokens = np.array([*sequence, tokenizer.eot_id], dtype=np.uint16)
    model = MLPModel(MLPConfig(context=4, n_embd=8, hiddens=[64]), tokenizer.vocab_size,
                     pad_id=tokenizer.eot_id)  # fmt: skip
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    batches = TokenBatches(tokens, 32, 32, seed=1, history=3)  # as the trainer draws them
    for _ in range(300):
        loss = model(*batches.next(torch.device("cpu")))[1]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    whole = evaluate(model, tokens, tokenizer, EvalConfig(scoring="whole", precision="fp32"))
    assert whole.bpb < 0.05
    for window in (8, 64):
        sample = EvalConfig(scoring="sample", batches=4, batch_size=8, precision="fp32")
        scored = evaluate(model, tokens, tokenizer, sample, window=window)
        assert scored.tokens == 4 * 8 * window and scored.bpb < 0.05, window


def test_a_shard_overwritten_in_place_is_named_when_it_is_opened(tmp_path):
    # Bytes overwritten at the same size: ids past the vocabulary, and a training that failed
    # deep in an embedding lookup ("index out of range in self"), naming no file.
    from storage.shards import ShardError, ShardWriter, open_shard

    path = tmp_path / "shards" / "val.bin"
    path.parent.mkdir()
    writer = ShardWriter(path, "tok", eot_id=0, vocab_size=300)
    writer.write([1, 2, 299], 3)
    writer.close()
    tokens, _ = open_shard(path, "tok")
    assert list(tokens)[:3] == [1, 2, 299]
    path.write_bytes(b"\xff" * path.stat().st_size)
    with pytest.raises(ShardError, match=r"val\.bin: holds token id 65535, past the tokenizer's "
                                         r"300 ids: the file is damaged"):  # fmt: skip
        open_shard(path, "tok")


def test_a_score_is_summed_over_targets_and_its_spread_is_the_sample_deviation_over_batches():
    """Loss and bits per byte are sums over every scored target (a batch with fewer scored
    targets weighs less, not as much as the others); their spreads are the sample standard
    deviations (n - 1) of the per-batch values, and `bpb_se` that over √batches."""
    import statistics

    from lm.evaluate import score_windows

    model = BigramCountModel(BigramCountConfig(smoothing=0.5), 5)
    model.fit(torch.tensor([0, 1, 2, 3, 1, 2, 0, 4, 4, 1, 0]))
    lengths = torch.tensor([1, 2, 3, 1, 4])
    token_bytes = TokenBytes(lengths, torch.zeros(5, dtype=torch.bool), 0, 0)
    windows = [
        (torch.tensor([[0, 1, 2, 3]]), torch.tensor([[1, 2, 3, 1]])),
        (torch.tensor([[4, 4, 1, 0]]), torch.tensor([[4, 1, 0, -100]])),
        (torch.tensor([[2, 0, 3, 3]]), torch.tensor([[0, 3, -100, -100]])),
    ]
    nats, tokens, n_bytes = [], [], []
    with torch.no_grad():
        for x, y in windows:
            log_probs = F.log_softmax(model(x)[0][0].double(), dim=-1)
            scored = [(t, int(target)) for t, target in enumerate(y[0]) if target != -100]
            nats.append(-sum(log_probs[t, target].item() for t, target in scored))
            tokens.append(len(scored))
            n_bytes.append(sum(int(lengths[target]) for _, target in scored))
    score = score_windows(model, windows, token_bytes)
    bpbs = [n / math.log(2) / b for n, b in zip(nats, n_bytes, strict=True)]
    assert score.loss == pytest.approx(sum(nats) / sum(tokens))
    assert score.bpb == pytest.approx(sum(nats) / math.log(2) / sum(n_bytes))
    assert (score.tokens, score.bytes) == (sum(tokens), sum(n_bytes))
    assert score.loss_std == pytest.approx(
        statistics.stdev(n / t for n, t in zip(nats, tokens, strict=True))
    )
    assert score.bpb_std == pytest.approx(statistics.stdev(bpbs))
    assert score.bpb_se == pytest.approx(statistics.stdev(bpbs) / math.sqrt(3))
