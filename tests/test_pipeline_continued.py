"""The `lm-pipeline` flow continuing a model and feeding models word vectors, end to end: what
`train.init_from` reuses (tokenizer, vectors) and refuses, and word2vec under each split. Apart
from test_pipeline.py so that the two halves run on both test workers."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import string

import duckdb
import pytest
import torch

from lm.config import ConfigError, load_config
from tests.helpers import prose, write_config
from tests.test_pipeline import TINY_GPT, run_pipeline, stage_states


def test_word2vec_under_the_ordered_split_learns_only_the_train_part_of_the_stream(
    workspace, tmp_path
):
    from lm.models.embeddings import load_keyed_vectors

    folder = tmp_path / "stream"
    folder.mkdir()
    for index in range(12):
        (folder / f"doc{index:02d}.txt").write_text(prose(index, 150))
    # The stream's end, which the ordered split makes val: words no other document has (in
    # a text the quality rules keep).
    last = prose(99, 150) + (" The quokkaberry grows in Wuzzlestan. A quokkaberry is sweet. "
                             "Wuzzlestan sells quokkaberry jam.")  # fmt: skip
    (folder / "zz-last.txt").write_text(last)
    config = write_config(tmp_path / "ordered.toml", [{"path": str(folder)}])
    word2vec = ["word2vec.enabled=true", "word2vec.vector_size=16", "word2vec.epochs=1",
                "word2vec.min_count=1", 'word2vec.projection="pca"', 'split.method="ordered"',
                "split.val=0.1", "split.test=0.0"]  # fmt: skip
    summary = run_pipeline(config, word2vec)
    assert summary["corpus"]["kept"] == 13  # the last document too
    [vectors_file] = (workspace.artifacts / "word2vec").glob("*/vectors.npy")
    words = set(load_keyed_vectors(vectors_file).index_to_key)
    assert "quokkaberry" not in words and "wuzzlestan" not in words
    assert {"mountain", "teacher", "garden"} <= words  # the train documents' words
    # The tokenizer's statistics are measured on the stream's val part (the last document):
    # read from the corpus's empty val split, they were all 0, and so was `tokenizers compare`.
    stats = summary["tokenizer"]
    held_out = round(0.1 * summary["corpus"]["kept_bytes"])  # the stream's last tenth
    assert abs(stats["tokens"] - held_out) <= 1 and stats["bytes_per_token"] == 1.0  # characters
    # Another val part, the same corpus digest: measured again (the first part's were reused).
    wider = run_pipeline(config, [*word2vec, "split.val=0.3"])
    assert wider["corpus"]["digest"] == summary["corpus"]["digest"]
    assert abs(wider["tokenizer"]["tokens"] - round(0.3 * summary["corpus"]["kept_bytes"])) <= 1
    from tests.conftest import run_cli

    compared = run_cli("tokenizers", "compare", "--vocab-size", "400").stdout
    val_tokens = re.findall(r"^│ (?:bpe|unigram)\s+│ 400\s+│ [\d.]+\s+│ ([\d,]+)", compared,
                            flags=re.MULTILINE)  # fmt: skip
    assert len(val_tokens) == 2 and all(int(n.replace(",", "")) > 0 for n in val_tokens)


WORD2VEC_LADDER = """
[split]
val = 0.3

[word2vec]
enabled = true
input = "pieces"
vector_size = 16
min_count = 1
epochs = 1
probes = []

[train]
max_steps = 6
micro_batch = 4
global_batch = 4
eval_every = 6
eval_batches = 2
block_size = 8

[eval]
batches = 2
batch_size = 4
samples = 0

[[models]]
kind = "w2v"
context = 3
vector_size = 16
hiddens = [32]

[[models]]
name = "gpt-word2vec"
kind = "gpt"
block_size = 16
n_layer = 1
n_head = 2
n_embd = 16
init_embeddings = "word2vec"
"""


def test_word2vec_fed_models_train_on_the_run_s_piece_vectors(workspace, tmp_path, sources):
    config = write_config(tmp_path / "w2v.toml", sources, WORD2VEC_LADDER)
    # The helper turns word2vec off; this run's own [word2vec] table replaces that one.
    config.write_text(config.read_text().replace("[word2vec]\nenabled = false\n", "", 1))
    summary = run_pipeline(config)
    models = {model["label"]: model for model in summary["models"]}
    assert set(models) == {"w2v", "gpt-word2vec"}
    for model in models.values():
        assert model["word2vec_coverage"] > 0.9  # every character seen once is a vector
        assert model["steps"] == 6
    # Changing the vectors retrains the models that read them.
    again = run_pipeline(config, ["word2vec.seed=2"])
    states = stage_states(again)
    assert states["word2vec"] == "ran" and states["train/w2v"] == "ran"
    assert states["train/gpt-word2vec"] == "ran"
    # A continued model's vectors are its checkpoint's: other vectors do not train it again.
    from storage.artifacts import Descriptor
    from tasks.train import train_key

    w2v = next(run for run in load_config(str(config)).model_runs() if run.label == "w2v")
    continued = w2v.train.model_copy(update={"init_from": models["w2v"]["path"]})
    shards = tokenizer = Descriptor("x", "k", "p", "d", {})
    keys = {train_key(shards, tokenizer, w2v.model, settings, Descriptor("v", "k", "p", d, {}))
            for settings in (w2v.train, continued) for d in ("vectors-1", "vectors-2")}  # fmt: skip
    assert len(keys) == 3  # from scratch two, continued one
    with pytest.raises(ConfigError, match=r'word2vec\.input = "pieces"'):
        run_pipeline(config, ['word2vec.input="words"'])

    # Under torchrun the ranks build the models from the same vectors, handed over in a file:
    # the frozen w2v table published is the one-process run's.
    import torch

    ranked = run_pipeline(config, ["train.nproc_per_node=2", "train.global_batch=8"])
    in_ranks = {model["label"]: model for model in ranked["models"]}
    assert [in_ranks[label]["processes"] for label in ("w2v", "gpt-word2vec")] == [2, 2]
    # torchrun gives each of several ranks one thread unless OMP_NUM_THREADS says otherwise.
    threads = int(os.environ.get("OMP_NUM_THREADS", 1))
    assert [in_ranks[label]["threads"] for label in ("w2v", "gpt-word2vec")] == [threads] * 2

    def table(model) -> torch.Tensor:
        weights = workspace.resolve(model["path"]) / "final" / "model.pt"
        return torch.load(weights, weights_only=True)["vectors"]

    assert torch.equal(table(in_ranks["w2v"]), table(models["w2v"]))


def test_init_from_under_other_meaning_switches_is_refused_and_bigram_count_has_no_init(
    workspace, config
):
    """Rope weights loaded silently into a sinusoidal GPT (the sinusoids at full amplitude),
    and an RMSNorm's gains into a LayerNorm; a count model ignored init_from."""
    from lm.models.config import BigramCountConfig
    from lm.train_config import TrainConfig, TrainingError
    from tasks.train import init_checkpoint

    first = run_pipeline(config, [*TINY_GPT, 'model.pos="rope"', 'model.norm="rmsnorm"'])
    start = f"train.init_from={json.dumps(first['models'][-1]['path'])}"
    changed = r"model\.pos 'rope' → 'sinusoidal', model\.norm 'rmsnorm' → 'layernorm'\), which"
    with pytest.raises(TrainingError, match=changed):
        run_pipeline(config, [*TINY_GPT, start, 'model.pos="sinusoidal"'])
    # Switches that keep the weights' meaning may change: here dropout.
    continued = run_pipeline(
        config, [*TINY_GPT, start, 'model.pos="rope"', 'model.norm="rmsnorm"', "model.dropout=0.1"]
    )
    assert continued["models"][-1]["steps"] == 12
    counted = TrainConfig(init_from=first["models"][-1]["path"])
    with pytest.raises(TrainingError, match=r"a bigram-count model is counted .* drop train"):
        init_checkpoint(counted, workspace, BigramCountConfig())


def forget_tokenizers(workspace) -> None:
    """The registry's tokenizer rows deleted, as a run killed before recording leaves none."""
    with duckdb.connect(str(workspace.registry_path)) as connection:
        connection.execute("DELETE FROM tokenizers")


def test_init_from_continues_on_new_data_with_the_checkpoint_s_tokenizer(
    workspace, config, tmp_path
):
    """New documents train another BPE tokenizer, and the continued run was refused ("made
    with tokenizer …, but this run's tokenizer is …") with no way to keep the old one."""
    from lm.train_config import TrainingError

    bpe = [*TINY_GPT, 'tokenizer={kind="bpe", vocab_size=400}']
    first = run_pipeline(config, bpe)
    (tmp_path / "texts" / "doc-new.txt").write_text(prose(99, 300))
    retokenized = run_pipeline(config, [*bpe, "train.max_steps=6"])
    assert retokenized["tokenizer"]["digest"] != first["tokenizer"]["digest"]
    # Two models continuing checkpoints of those two tokenizers: a run has one tokenizer.
    shape = 'kind="gpt", block_size=16, n_layer=1, n_head=2, n_embd=16'
    entries = [
        f'{{{shape}, name="{name}", train={{init_from={json.dumps(paths)}}}}}'
        for name, paths in (("old", first["models"][-1]["path"]),
                            ("new", retokenized["models"][-1]["path"]))
    ]  # fmt: skip
    ladder = f"models=[{', '.join(entries)}]"
    unmodelled = [item for item in bpe if not item.startswith("model.")]
    with pytest.raises(TrainingError) as mixed:
        run_pipeline(config, [*unmodelled, ladder])
    assert "the models continue checkpoints made with different tokenizers (" in str(mixed.value)
    assert f"{first['tokenizer']['digest'][:12]} in " in str(mixed.value)
    assert f"{retokenized['tokenizer']['digest'][:12]} in " in str(mixed.value)
    start = f"train.init_from={json.dumps(first['models'][-1]['path'])}"
    continued = run_pipeline(config, [*bpe, start])
    assert continued["corpus"]["digest"] == retokenized["corpus"]["digest"]
    assert continued["tokenizer"]["digest"] == first["tokenizer"]["digest"]
    assert continued["models"][-1]["steps"] == 12 and continued["tokenizer"]["bytes_per_token"]
    # `size` counts the parameters with that tokenizer's vocabulary too, not [tokenizer]'s.
    from tests.conftest import run_cli

    other = [*TINY_GPT, 'tokenizer={kind="bpe", vocab_size=2000}', start]
    sized = run_cli("size", str(config), *[arg for item in other for arg in ("--set", item)])
    assert "vocabulary: 400 ids, the tokenizer of train.init_from's checkpoint" in sized.stdout
    # A checkpoint copied out of its model folder, its tokenizer in no registry row (a run
    # killed before it recorded): the workspace's tokenizer outputs are searched.
    copied = tmp_path / "elsewhere" / "checkpoint"
    shutil.copytree(workspace.resolve(first["models"][-1]["path"]) / "best", copied)
    forget_tokenizers(workspace)
    moved = f"train.init_from={json.dumps(str(copied))}"
    from_store = run_pipeline(config, [*bpe, moved, "train.max_steps=10"])
    assert from_store["tokenizer"]["digest"] == first["tokenizer"]["digest"]
    # Its tokenizer output gone, the copy in the trained model folder serves.
    shutil.rmtree(workspace.artifacts / "tokenizer")
    again = run_pipeline(config, [*bpe, start, "train.max_steps=8"])
    assert again["tokenizer"]["digest"] == first["tokenizer"]["digest"]
    assert stage_states(again)["tokenizer"] == "ran" and again["models"][-1]["steps"] == 8
    # Nowhere at all: the configured tokenizer is trained, with a warning, and the checkpoint
    # refuses it as before (it came out another).
    shutil.rmtree(workspace.artifacts / "tokenizer")
    forget_tokenizers(workspace)
    with pytest.raises(TrainingError, match="made with tokenizer"):
        run_pipeline(config, [*bpe, moved, "train.max_steps=9"])


def test_init_from_a_checkpoint_too_old_to_name_its_tokenizer_takes_its_folder_s_copy(
    workspace, config, tmp_path, caplog
):
    """Checkpoints from before November 2026 record no tokenizer digest: the configured
    tokenizer, trained again on new data, was used in silence (3,921 of 4,000 ids other
    pieces). The copy in the model folder is the one; without it, a warning."""
    bpe = [*TINY_GPT, 'tokenizer={kind="bpe", vocab_size=400}']
    first = run_pipeline(config, bpe)
    old_model = tmp_path / "old-model"
    shutil.copytree(workspace.resolve(first["models"][-1]["path"]), old_model)
    for checkpoint in (old_model / "best", old_model / "final"):
        info = json.loads((checkpoint / "checkpoint.json").read_text())
        del info["tokenizer_digest"]
        (checkpoint / "checkpoint.json").write_text(json.dumps(info))
    (tmp_path / "texts" / "doc-new.txt").write_text(prose(99, 300))
    start = f"train.init_from={json.dumps(str(old_model))}"
    continued = run_pipeline(config, [*bpe, start, "train.max_steps=6"])
    assert continued["tokenizer"]["digest"] == first["tokenizer"]["digest"]
    shutil.rmtree(old_model / "tokenizer")
    logging.getLogger("lm.pipeline").addHandler(caplog.handler)  # the flow replaced the root's
    try:
        run_pipeline(config, [*bpe, start, "train.max_steps=7"])
    finally:
        logging.getLogger("lm.pipeline").removeHandler(caplog.handler)
    assert "records no tokenizer (an lmforge before November 2026 made it)" in caplog.text


def test_a_continued_char_model_that_cannot_spell_new_text_says_what_to_do(
    workspace, tmp_path, caplog
):
    """Its tokenizer refuses unseen characters (`unknown_chars = "error"`), and the advice
    it gives (another unknown_chars) cannot apply: the continued model keeps its tokenizer."""
    from lm.tokenizer import TokenizerError

    folder = tmp_path / "letters"
    folder.mkdir()
    alphabet = " ".join(string.ascii_letters) + " ."
    for index in range(8):  # every character in every document: no split lacks one
        (folder / f"{index}.txt").write_text(f"{prose(index, 100)} {alphabet}")
    config = write_config(tmp_path / "letters.toml", [{"path": str(folder)}])
    char = [*TINY_GPT, 'tokenizer={kind="char", unknown_chars="error"}']
    first = run_pipeline(config, char)
    (folder / "greek.txt").write_text(f"{prose(50, 100)} {alphabet} αβγδε ζηθ")
    start = f"train.init_from={json.dumps(first['models'][-1]['path'])}"
    with pytest.raises(TokenizerError, match=r"drop train\.init_from to train a new one"):
        run_pipeline(config, [*char, start, "split.val=0.9"])
    (folder / "greek.txt").unlink()
    # Another [tokenizer] is said to be unused. (The flow's logging set-up replaced the root
    # handlers caplog listens on: listen here.)
    logging.getLogger("lm.pipeline").addHandler(caplog.handler)
    try:
        run_pipeline(config, [*TINY_GPT, 'tokenizer={kind="bpe", vocab_size=400}', start])
    finally:
        logging.getLogger("lm.pipeline").removeHandler(caplog.handler)
    assert "[tokenizer] asks for bpe, 400 ids, but this run continues a model" in caplog.text
