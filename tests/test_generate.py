"""Generation: seeded sampling, greedy decoding checked by hand (with and without the KV cache,
past the context length), stopping at end-of-text, streaming multi-byte characters, prompts the
tokenizer cannot encode, and the `generate` and `chat` commands."""

from __future__ import annotations

import io
import os
import re
import shutil
import subprocess
import unicodedata
from datetime import datetime

import pytest
import torch
from typer.testing import CliRunner

from lm.config import TokenizerConfig
from lm.eval_config import SamplingConfig
from lm.generate import choose_next, encode_prompt, generate, generate_ids, stream_text
from lm.models.bigram_count import BigramCountModel
from lm.models.config import BigramCountConfig, GPTConfig, MLPConfig
from lm.models.registry import build_model
from lm.tokenizer import TokenizerError, train_tokenizer
from lm.train_config import TrainConfig
from storage.artifacts import Descriptor
from storage.registry import ModelRecord, RunRegistry
from storage.shards import ShardWriter
from storage.workspace import Workspace
from tests.conftest import REPO, lmforge_command
from tests.helpers import prose

GREEDY = SamplingConfig(temperature=0.0, max_new_tokens=30)
DOCS = [prose(i, 60) for i in range(20)]


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """Tensors here are tiny: on a shared two-core machine a second intra-op thread only spins
    (measured: 100x slower greedy decoding under load)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def char_tokenizer(text: str, unknown_chars: str = "unk"):
    return train_tokenizer(iter([text]), TokenizerConfig(kind="char", unknown_chars=unknown_chars))


def decisive_gpt(vocab: int, pos: str = "rope", block: int = 8):
    """A random GPT with large logits, so greedy choices have no near-ties that rounding
    between the cached and the recomputed path could flip."""
    torch.manual_seed(0)
    config = GPTConfig(block_size=block, n_layer=2, n_head=2, n_embd=16, pos=pos,
                       tie_embeddings=False)  # fmt: skip
    model = build_model(config, vocab)
    with torch.no_grad():
        model.head.weight.mul_(200)
    return model.eval()


def decode_by_hand(model, context: list[int], sampling: SamplingConfig) -> list[int]:
    """Recompute the whole (cropped) context every step: no cache."""
    tokens = list(context)
    generator = torch.Generator().manual_seed(sampling.seed)
    with torch.no_grad():
        for _ in range(sampling.max_new_tokens):
            logits, _ = model(torch.tensor([tokens[-model.block_size :]]))
            if sampling.temperature == 0:
                tokens.append(int(logits[0, -1].argmax()))
            else:
                tokens.append(choose_next(logits[0, -1], tokens, sampling, generator))
    return tokens[len(context) :]


@pytest.mark.parametrize("pos", ["rope", "learned", "sinusoidal"])
def test_greedy_with_the_kv_cache_equals_argmax_by_hand_past_the_context(pos):
    model = decisive_gpt(40, pos)
    context = [3, 1, 4, 1, 5]
    steps = 3 * model.block_size  # the window slides after the first few steps
    greedy = SamplingConfig(temperature=0.0, max_new_tokens=steps)
    top_1 = SamplingConfig(temperature=0.7, top_k=1, max_new_tokens=steps)
    expected = decode_by_hand(model, context, greedy)
    assert list(generate_ids(model, context, greedy, eot_id=-1)) == expected
    assert list(generate_ids(model, context, top_1, eot_id=-1)) == expected


@pytest.mark.parametrize("pos", ["rope", "learned", "sinusoidal"])
def test_sampling_with_the_kv_cache_equals_recomputing_every_step(pos):
    model = decisive_gpt(40, pos)
    with torch.no_grad():
        model.head.weight.div_(10)  # peaked, not certain: draws vary, and follow the model
    sampling = SamplingConfig(temperature=1.0, max_new_tokens=3 * model.block_size, seed=9)
    expected = decode_by_hand(model, [3, 1, 4], sampling)
    assert list(generate_ids(model, [3, 1, 4], sampling, eot_id=-1)) == expected
    assert len(set(expected)) > 5


def test_models_without_a_cache_recompute_over_their_context():
    torch.manual_seed(0)
    model = build_model(MLPConfig(context=3, n_embd=8, hiddens=[32]), 40).eval()
    with torch.no_grad():
        model.head.weight.mul_(500)
    sampling = GREEDY.model_copy(update={"max_new_tokens": 20})
    expected = decode_by_hand(model, [7, 8], sampling)
    assert list(generate_ids(model, [7, 8], sampling, eot_id=-1)) == expected
    assert len(set(expected)) > 1


def test_the_same_seed_gives_the_same_tokens_and_another_seed_others():
    torch.manual_seed(0)
    model = build_model(GPTConfig(block_size=16, n_layer=1, n_head=2, n_embd=16), 50).eval()
    sampling = SamplingConfig(temperature=1.0, top_p=0.95, max_new_tokens=40, seed=3)
    first = list(generate_ids(model, [1, 2], sampling, eot_id=-1))
    again = list(generate_ids(model, [1, 2], sampling, eot_id=-1))
    other = list(generate_ids(model, [1, 2], sampling.model_copy(update={"seed": 4}), eot_id=-1))
    assert first == again and len(first) == 40
    assert first != other


def test_generation_stops_at_end_of_text():
    tokenizer = char_tokenizer("ab")
    stream = [*tokenizer.encode("ab"), tokenizer.eot_id] * 20
    model = BigramCountModel(BigramCountConfig(), tokenizer.vocab_size).fit(torch.tensor(stream))
    assert "".join(generate(model, tokenizer, "a", GREEDY)) == "b"  # a → b → end-of-text


def test_generation_never_samples_the_unknown_piece():
    """An undertrained model sampled `<unk>` (written " ⁇ " by SentencePiece, "<unk>" by the
    char tokenizer): text the tokenizer could not spell, never text the model can mean."""
    tokenizer = char_tokenizer("ab")  # "x" is <unk>
    stream = tokenizer.encode("axaxaxaxab" * 20)  # after "a" the likeliest is <unk>
    assert tokenizer.unknown_id in stream
    model = BigramCountModel(BigramCountConfig(), tokenizer.vocab_size).fit(torch.tensor(stream))
    assert "".join(generate(model, tokenizer, "a", GREEDY))[0] == "b"  # not " ⁇ "
    sampled = SamplingConfig(temperature=1.0, max_new_tokens=200, seed=3)
    assert "<unk>" not in "".join(generate(model, tokenizer, "a", sampled))  # its decoding
    bpe = train_tokenizer(iter(DOCS), TokenizerConfig(kind="bpe", vocab_size=300))
    assert bpe.piece(bpe.unknown_id) == "<unk>" and tokenizer.piece(tokenizer.unknown_id) == "<unk>"
    assert char_tokenizer("ab", unknown_chars="bytes").unknown_id is None


def test_multibyte_characters_arriving_byte_by_byte_are_never_garbled():
    tokenizer = char_tokenizer("a", unknown_chars="bytes")  # 日 and é exist only as bytes
    stream = tokenizer.encode("a日é" * 10)
    assert len(stream) == 60  # one id per byte
    model = BigramCountModel(BigramCountConfig(), tokenizer.vocab_size).fit(torch.tensor(stream))
    pieces = list(generate(model, tokenizer, "a", GREEDY.model_copy(update={"max_new_tokens": 12})))
    assert pieces == ["日", "é", "a", "日", "é", "a"]
    # Out of tokens one or two bytes into 日: the unfinished character is left out (it was a
    # replacement character at the sample's end).
    for cut in (13, 14):
        sampling = GREEDY.model_copy(update={"max_new_tokens": cut})
        assert "".join(generate(model, tokenizer, "a", sampling)) == "日éa日éa"


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_control_characters_a_model_writes_are_shown_not_obeyed_on_a_terminal(monkeypatch):
    # Byte pieces let a model write ESC sequences (a terminal title, OSC 52 clipboard writes);
    # a terminal gets them as text, a pipe gets the text as generated.
    from flows.generate_cli import _stream

    tokenizer = char_tokenizer("a", unknown_chars="bytes")  # ESC exists only as a byte
    stream = tokenizer.encode("a\x1b]0;x\x07" * 10)
    model = BigramCountModel(BigramCountConfig(), tokenizer.vocab_size).fit(torch.tensor(stream))
    sampling = GREEDY.model_copy(update={"max_new_tokens": 6})
    for output, expected in ((Terminal(), "\\x1b]0;x\\x07\n"), (io.StringIO(), "\x1b]0;x\x07\n")):
        monkeypatch.setattr("sys.stdout", output)
        _stream(model, tokenizer, "a", sampling, echo=False, one_line=False)
        assert output.getvalue() == expected


def test_sentencepiece_streaming_reassembles_the_decoded_text():
    tokenizer = train_tokenizer(iter(DOCS), TokenizerConfig(kind="bpe", vocab_size=300))
    model = decisive_gpt(tokenizer.vocab_size, block=16)
    prompt = "Über the river"
    pieces = list(generate(model, tokenizer, prompt, GREEDY))
    prompt_ids = encode_prompt(tokenizer, prompt)
    ids = list(generate_ids(model, [tokenizer.eot_id, *prompt_ids], GREEDY, tokenizer.eot_id,
                            penalized=prompt_ids))  # fmt: skip
    assert prompt + "".join(pieces) == tokenizer.decode(prompt_ids + ids)
    assert len(pieces) > 1 and all(pieces)


class DecodeLengths:
    """A tokenizer that records how many ids each `decode` gets."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.lengths: list[int] = []

    def decode(self, ids) -> str:
        ids = list(ids)
        self.lengths.append(len(ids))
        return self.tokenizer.decode(ids)


def test_streaming_a_long_text_decodes_short_windows_into_the_same_text():
    """Decoding the whole text at every token made 8,000 tokens cost 3 s of decoding."""
    import random

    tokenizer = train_tokenizer(iter(DOCS), TokenizerConfig(kind="bpe", vocab_size=400))
    rng = random.Random(0)
    ids = [rng.randrange(tokenizer.vocab_size) for _ in range(3000)]  # byte pieces too
    ids = [i for i in ids if i != tokenizer.eot_id] + tokenizer.encode(" end")  # whole at the end
    prompt_ids = tokenizer.encode("The river")
    recording = DecodeLengths(tokenizer)
    text = "".join(stream_text(recording, prompt_ids, iter(ids)))
    assert "The river" + text == tokenizer.decode(prompt_ids + ids)
    assert max(recording.lengths[2:]) < 20


def test_a_literal_space_mark_the_model_writes_streams_as_itself():
    """SentencePiece text escapes a literal "▁" as two pieces; streaming the first alone printed
    the private-use escape character instead."""
    docs = [f"{text} a_b ▁x" for text in DOCS]
    tokenizer = train_tokenizer(iter(docs), TokenizerConfig(kind="bpe", vocab_size=400))
    ids = tokenizer.encode("river ▁x and ▁")
    assert len(ids) > len("river ▁x and ▁".split())
    assert "".join(stream_text(tokenizer, [], iter(ids))) == "river ▁x and ▁"


def test_unencodable_prompt_characters_use_byte_fallback_or_are_named():
    with_fallback = train_tokenizer(iter(DOCS), TokenizerConfig(kind="bpe", vocab_size=300))
    ids = encode_prompt(with_fallback, "日本 river")
    assert any(with_fallback.is_byte(i) for i in ids)
    assert with_fallback.decode(ids) == "日本 river"
    model = decisive_gpt(with_fallback.vocab_size, block=16)
    assert isinstance("".join(generate(model, with_fallback, "日本 river", GREEDY)), str)

    without = train_tokenizer(
        iter(DOCS), TokenizerConfig(kind="bpe", vocab_size=100, byte_fallback=False)
    )
    char = char_tokenizer(" ".join(DOCS), unknown_chars="unk")
    refusing = char_tokenizer(" ".join(DOCS), unknown_chars="error")  # was: "retrain with them"
    for tokenizer in (without, char, refusing):
        with pytest.raises(TokenizerError, match="cannot encode: '日', '本'"):
            generate(model, tokenizer, "the 日本 river", GREEDY)


def test_a_decomposed_prompt_is_encoded_as_the_composed_text_the_corpus_holds():
    """The corpus is stored NFC; a prompt typed decomposed (NFD, as macOS input can give it) was
    encoded as it came: its accents became byte pieces the model never trained on (BPE), or were
    refused as characters a char tokenizer lacks though the text looked the same."""
    text = "Tiếng Việt và tiếng Pháp, café, naïve. " * 5
    composed, decomposed = "Tiếng Việt café", unicodedata.normalize("NFD", "Tiếng Việt café")
    assert composed != decomposed
    bpe = train_tokenizer(iter([text, *DOCS]), TokenizerConfig(kind="bpe", vocab_size=320))
    char = char_tokenizer(text, unknown_chars="error")
    for tokenizer in (bpe, char):
        assert encode_prompt(tokenizer, decomposed) == tokenizer.encode(composed)


def test_top_k_and_top_p_sample_only_the_likeliest_tokens():
    logits = torch.log(torch.tensor([0.4, 0.3, 0.2, 0.1]))
    generator = torch.Generator().manual_seed(0)

    def draws(**settings) -> set[int]:
        sampling = SamplingConfig(temperature=1.0, **settings)
        return {choose_next(logits, [], sampling, generator) for _ in range(300)}

    assert draws() == {0, 1, 2, 3}
    assert draws(top_k=2) == {0, 1}
    assert draws(top_p=0.65) == {0, 1}  # 0.4 < 0.65 ≤ 0.4 + 0.3
    assert draws(top_p=0.01) == {0}
    assert draws(top_p=1e-46) == {0}  # 0 in float32: was "invalid multinomial distribution"
    assert draws(top_k=1, top_p=1e-300) == {0}
    ties = torch.zeros(50)  # all alike: top-k still keeps exactly k of them
    assert len({choose_next(ties, [], SamplingConfig(temperature=1.0, top_k=3), generator)
                for _ in range(300)}) == 3  # fmt: skip
    # A temperature so small that dividing by it overflows samples greedily, not NaN.
    assert choose_next(logits, [], SamplingConfig(temperature=1e-45), generator) == 0


def test_temperature_divides_the_logits_before_sampling():
    """Every other test samples at temperature 1 or greedily, where multiplying by it would
    pass as well: the draws follow softmax(logits / t)."""
    logits = torch.tensor([0.0, 1.0])
    generator = torch.Generator().manual_seed(0)
    for temperature in (0.5, 2.0):
        sampling = SamplingConfig(temperature=temperature)
        ones = sum(choose_next(logits, [], sampling, generator) for _ in range(4000)) / 4000
        expected = float(torch.softmax(logits / temperature, 0)[1])  # 0.881, then 0.622
        assert ones == pytest.approx(expected, abs=0.025), temperature


def test_repetition_penalty_divides_positive_and_multiplies_negative_logits():
    logits = torch.tensor([2.0, 1.5, -1.0, -1.2])
    generator = torch.Generator()
    greedy = SamplingConfig(temperature=0.0, repetition_penalty=2.0)
    assert choose_next(logits, [], greedy, generator) == 0
    assert choose_next(logits, [0], greedy, generator) == 1  # 2.0 / 2 < 1.5
    assert choose_next(torch.tensor([-1.0, -1.5]), [], greedy, generator) == 0
    assert choose_next(torch.tensor([-1.0, -1.5]), [0], greedy, generator) == 1  # -1 × 2 < -1.5


def test_a_penalty_or_temperature_tiny_enough_to_overflow_samples_without_nan():
    """2.0 / 1e-300 is +inf in float32, and softmax made NaN of it: a RuntimeError traceback."""
    logits = torch.tensor([2.0, 1.0, -1.0, 0.5])
    generator = torch.Generator().manual_seed(0)
    penalty = SamplingConfig(temperature=1.0, repetition_penalty=1e-300)
    assert {choose_next(logits, [0, 1], penalty, generator) for _ in range(200)} == {0, 1}
    cold = SamplingConfig(temperature=2e-5)
    assert choose_next(torch.tensor([1e34, 0.0]), [], cold, generator) == 0


# -- the commands ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def recorded_run(tmp_path_factory):
    """A workspace whose registry knows one run with a trained count-bigram model on
    characters (cheap, and its greedy text is fixed)."""
    from tasks.train import train_task

    home = tmp_path_factory.mktemp("generate")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("LMFORGE_HOME", str(home))
        workspace = Workspace.from_env().ensure()
        tokenizer = char_tokenizer(" ".join(DOCS))
        (workspace.artifacts / "tokenizer").mkdir()
        tokenizer.save(workspace.artifacts / "tokenizer")
        for split, documents in (("train", DOCS[:16]), ("val", DOCS[16:])):
            writer = ShardWriter(workspace.artifacts / f"{split}.bin", tokenizer.digest,
                                 tokenizer.eot_id, tokenizer.vocab_size)  # fmt: skip
            for text in documents:
                writer.write(tokenizer.encode(text), len(text.encode()))
            writer.close()
        trained = train_task.fn(
            Descriptor("encode", "s", "artifacts", "shards"),
            Descriptor("tokenizer", "t", "artifacts/tokenizer", tokenizer.digest),
            BigramCountConfig(),
            TrainConfig(block_size=16, micro_batch=4, global_batch=4, eval_batches=2),
        )
        registry = RunRegistry(workspace.registry_path)
        registry.start_run({"run_id": "20260101-000000-abcdef", "status": "running",
                            "started_at": datetime.now()})  # fmt: skip
        model = ModelRecord("counts", "bigram-count", trained.digest, trained.path,
                            tokenizer.digest, "corpus", {}, {})  # fmt: skip
        registry.finish_run("20260101-000000-abcdef", "completed", datetime.now(), [],
                            models=[model])  # fmt: skip
    return home, trained, tokenizer


def test_readme_s_python_example_runs_on_a_recorded_run(recorded_run):
    """README's "From Python": load a run's model by its id, sample it, score a text, query."""
    home, trained, _ = recorded_run
    readme = (REPO / "README.md").read_text()
    section = readme.split("\n## From Python\n", 1)[1].split("\n## ", 1)[0]
    (code,) = re.findall(r"```python\n(.*?)```", section, flags=re.DOTALL)
    assert code.count('home = "./.lmforge"') == 1
    names = {"RUN_ID": "20260101"}  # a prefix, as a user may give it
    exec(code.replace('home = "./.lmforge"', f"home = {str(home)!r}"), names)
    assert names["text"] == expected_text(home, trained, "The river", names["SamplingConfig"](
        max_new_tokens=40, seed=1))  # fmt: skip
    score = names["score"]
    assert score.bytes == len(b"A held-out sentence.") + 1 and score.bpb > 0
    assert names["rows"] == [("counts", None)]


def expected_text(home, trained, prompt: str, sampling: SamplingConfig) -> str:
    from lm.evaluate import load_trained

    model, tokenizer = load_trained(home / trained.path)
    return "".join(generate(model, tokenizer, prompt, sampling))


def test_generate_command_streams_the_run_models_continuation(recorded_run, monkeypatch):
    from flows.cli import app

    home, trained, _ = recorded_run
    monkeypatch.setenv("LMFORGE_HOME", str(home))
    result = CliRunner().invoke(
        app,
        ["generate", "20260101", "--model", "counts", "--prompt", "The river",
         "--temperature", "0", "--max-new-tokens", "25"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    continuation = expected_text(home, trained, "The river",
                                 SamplingConfig(temperature=0, max_new_tokens=25))  # fmt: skip
    assert result.stdout == "The river" + continuation + "\n"
    assert len(continuation) == 25


def test_chat_answers_each_piped_line_with_one_line_until_eof(recorded_run):
    home, trained, _ = recorded_run
    env = dict(os.environ) | {"LMFORGE_HOME": str(home)}
    result = subprocess.run(
        lmforge_command("chat", str(home / trained.path), "--max-new-tokens", "40", "--seed", "5"),
        input="The river\nA quiet\n", capture_output=True, text=True, timeout=300, cwd=REPO,
        env=env,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    lines = result.stdout.split("\n")
    assert len(lines) == 3 and lines[2] == ""
    for index, prompt in enumerate(["The river", "A quiet"]):
        sampling = SamplingConfig(max_new_tokens=40, seed=5 + index)
        assert lines[index] == expected_text(home, trained, prompt, sampling).split("\n")[0]


def test_chat_at_a_terminal_prompts_on_stderr_and_answers_alone_on_stdout(recorded_run):
    """`chat RUN > answers.txt` typed at a terminal stored its "> " prompts among the answers."""
    import pty

    home, trained, _ = recorded_run
    env = dict(os.environ) | {"LMFORGE_HOME": str(home)}
    terminal, typed_at = pty.openpty()
    try:
        os.write(terminal, b"The river\n\x04")  # a line, then Ctrl-D
        result = subprocess.run(
            lmforge_command("chat", str(home / trained.path), "--max-new-tokens", "40", "--seed",
                            "5"),
            stdin=typed_at, capture_output=True, text=True, timeout=300, cwd=REPO, env=env,
        )  # fmt: skip
    finally:
        os.close(terminal)
        os.close(typed_at)
    assert result.returncode == 0, result.stderr
    expected = expected_text(home, trained, "The river", SamplingConfig(max_new_tokens=40, seed=5))
    assert result.stdout == expected.split("\n")[0] + "\n"
    assert "> > " in result.stderr  # a prompt for the line, and one more before Ctrl-D


def test_unknown_runs_labels_and_folders_are_clear_errors(recorded_run, tmp_path, monkeypatch):
    from flows.cli import app

    home, trained, _ = recorded_run
    monkeypatch.setenv("LMFORGE_HOME", str(home))
    runner = CliRunner()
    unknown = runner.invoke(app, ["generate", "19990101", "--prompt", "x"])
    assert unknown.exit_code == 1 and "flow run id) starting '19990101'" in unknown.stderr
    assert "alias" not in unknown.stderr  # a run id's digits name no alias a retrain keeps
    alias = runner.invoke(app, ["generate", "best", "--prompt", "x"])
    assert alias.exit_code == 1 and "and no model holds the alias 'best'" in alias.stderr
    # "" was the current folder ("not a trained model folder"); a path, a run id prefix.
    nothing = runner.invoke(app, ["generate", "", "--prompt", "x"])
    assert nothing.exit_code == 1 and "no run id or model folder given" in nothing.stderr
    missing = runner.invoke(app, ["generate", str(tmp_path / "gone"), "--prompt", "x"])
    assert missing.exit_code == 1 and f"{tmp_path / 'gone'}: no such model folder" in missing.stderr
    label = runner.invoke(app, ["generate", "20260101", "--model", "gpt", "--prompt", "x"])
    assert label.exit_code == 1 and "has no model 'gpt' (models: counts)" in label.stderr
    empty = tmp_path / "model"
    empty.mkdir()
    (empty / "model.json").write_text((home / trained.path / "model.json").read_text())
    folder = runner.invoke(app, ["generate", str(empty), "--prompt", "x"])
    assert folder.exit_code == 1 and f"{empty}: no complete checkpoint" in folder.stderr
    bad = runner.invoke(app, ["generate", str(home / trained.path), "--top-p", "1.5"])
    assert bad.exit_code == 1 and "--top-p" in bad.stderr
    unencodable = runner.invoke(app, ["generate", str(home / trained.path), "--prompt", "日本"])
    assert unencodable.exit_code == 1 and "cannot encode: '日', '本'" in unencodable.stderr


def test_sampling_options_out_of_range_are_one_line_errors_naming_the_value(
    recorded_run, monkeypatch
):
    """A seed torch.Generator cannot take was a traceback; an infinite temperature sampled
    noise."""
    from flows.cli import app

    home, trained, _ = recorded_run
    monkeypatch.setenv("LMFORGE_HOME", str(home))
    folder = str(home / trained.path)
    runner = CliRunner()
    maximum = 2**32 - 1  # torch's generator reads 32 bits: 2**32 + 7 drew what 7 draws
    refused = [
        ("--seed", str(2**32), f"--seed {2**32}: input should be less than or equal to {maximum}"),
        ("--seed", "-1", "--seed -1: input should be greater than or equal to 0"),
        ("--temperature", "inf", "--temperature inf: input should be a finite number"),
        ("--repetition-penalty", "nan", "--repetition-penalty nan: input should be a finite"),
        ("--top-k", "0", "--top-k 0: input should be greater than or equal to 1"),
    ]
    for option, value, message in refused:
        result = runner.invoke(app, ["generate", folder, "--prompt", "The", option, value])
        assert result.exit_code == 1 and message in result.stderr, result.output
    largest = runner.invoke(app, ["generate", folder, "--prompt", "The", "--seed", str(maximum)])
    assert largest.exit_code == 0, largest.output


def test_a_checkpoint_file_given_generates_with_its_checkpoint(recorded_run):
    """`generate …/best/model.pt` was looked up as a run id: "no run with an id starting …"."""
    from flows.cli import app

    home, trained, _ = recorded_run
    greedy = ["--temperature", "0", "--max-new-tokens", "12", "--prompt", "The"]
    said = [
        CliRunner().invoke(app, ["generate", str(path), *greedy], env={"LMFORGE_HOME": str(home)})
        for path in (home / trained.path / "best", home / trained.path / "best" / "model.pt",
                     home / trained.path / "model.json")  # a file of the model folder: its folder
    ]  # fmt: skip
    assert [result.exit_code for result in said] == [0, 0, 0], said[1].output + said[2].output
    assert said[2].stdout == said[1].stdout == said[0].stdout and said[0].stdout.startswith("The")
    notes = home / "notes.txt"  # a file in no model folder: named, not "." (its folder)
    notes.write_text("x")
    tokenizer = next((home / trained.path / "tokenizer").iterdir())  # not of a checkpoint
    for path in (notes, tokenizer):
        other = CliRunner().invoke(app, ["generate", str(path)], env={"LMFORGE_HOME": str(home)})
        assert other.exit_code == 1
        assert f"error: {path}: a file, not a model folder (one holding model" in other.stderr


def test_a_prompt_of_many_characters_the_tokenizer_lacks_names_the_first_20():
    """A pasted paragraph of another script listed every character in one error line."""
    char = char_tokenizer(" ".join(DOCS), unknown_chars="error")
    prompt = "the " + "".join(chr(code) for code in range(0x4E00, 0x4E00 + 50))
    with pytest.raises(TokenizerError) as raised:
        encode_prompt(char, prompt)
    listed = ", ".join(repr(chr(code)) for code in range(0x4E00, 0x4E00 + 20))
    assert f"cannot encode: {listed} and 30 more (it has no byte fallback)" in str(raised.value)


def test_a_prompt_that_is_not_utf8_is_an_error_naming_its_first_bad_byte():
    """Python keeps undecodable command-line bytes as lone surrogates; SentencePiece failed on
    them with a RuntimeError, the char tokenizer named them as unknown characters."""
    bpe = train_tokenizer(iter(DOCS), TokenizerConfig(kind="bpe", vocab_size=300))
    char = char_tokenizer(" ".join(DOCS), unknown_chars="bytes")
    prompt = b"the \xff\xfe river".decode("utf-8", "surrogateescape")
    for tokenizer in (bpe, char):
        with pytest.raises(TokenizerError, match="not UTF-8 text: byte 0xff at character 4"):
            encode_prompt(tokenizer, prompt)


def test_chat_strips_crlf_and_answers_a_line_that_is_not_utf8_with_an_error(recorded_run):
    """Under a strict locale a line that is not UTF-8 was a UnicodeDecodeError traceback that
    ended the chat; a CRLF line end was fed to the model as a character, and a file's BOM too."""
    from flows.cli import app

    home, trained, _ = recorded_run
    folder = str(home / trained.path)
    result = CliRunner().invoke(
        app,
        ["chat", folder, "--temperature", "0", "--max-new-tokens", "10"],
        input=b"\xef\xbb\xbfThe river\r\n\xff river\nA quiet\n",  # a BOM, as Notepad saves
        env={"LMFORGE_HOME": str(home)},
    )
    assert result.exit_code == 0, result.output
    greedy = SamplingConfig(temperature=0, max_new_tokens=10)
    answers = [
        expected_text(home, trained, p, greedy).split("\n")[0] for p in ("The river", "A quiet")
    ]
    assert result.stdout == f"{answers[0]}\n\n{answers[1]}\n"
    assert "line 2: the prompt is not UTF-8 text: byte 0xff at character 0" in result.stderr


def test_model_with_a_folder_and_a_run_whose_model_folder_is_gone_are_errors(
    recorded_run, monkeypatch
):
    """--model beside a folder was silently ignored (the folder's model answered); a deleted
    model folder was reported as 'not a trained model folder', as if the user had named it."""
    from flows.cli import app

    home, trained, tokenizer = recorded_run
    monkeypatch.setenv("LMFORGE_HOME", str(home))
    runner = CliRunner()
    folder = str(home / trained.path)
    both = runner.invoke(app, ["generate", folder, "--model", "counts", "--prompt", "The"])
    assert both.exit_code == 1
    assert f"--model counts: {folder} is a model, not a run" in both.stderr

    registry = RunRegistry(Workspace.from_env().registry_path)
    registry.start_run({"run_id": "20250101-000000-0a0b0c", "status": "running",
                        "started_at": datetime.now()})  # fmt: skip
    gone = ModelRecord("counts", "bigram-count", "digest", "artifacts/train/deleted",
                       tokenizer.digest, "corpus", {}, {})  # fmt: skip
    registry.finish_run("20250101-000000-0a0b0c", "completed", datetime.now(), [], models=[gone])
    result = runner.invoke(app, ["generate", "20250101", "--prompt", "The"])
    assert result.exit_code == 1
    assert "run 20250101-000000-0a0b0c: the folder of model 'counts' is gone" in result.stderr
    assert str(home / "artifacts/train/deleted") in result.stderr


def test_a_run_whose_model_folder_holds_another_output_is_refused_not_served(
    recorded_run, monkeypatch
):
    """Two train folders swapped by hand: `generate RUN` served the other run's model (the
    pipeline's stages rebuild such a folder; generate read it as it was)."""
    from flows.cli import app

    home, trained, _ = recorded_run
    monkeypatch.setenv("LMFORGE_HOME", str(home))
    folder = home / trained.path
    descriptor = folder / "descriptor.json"
    kept = descriptor.read_text()
    descriptor.write_text(kept.replace(trained.key, "train-another"))
    try:
        result = CliRunner().invoke(app, ["generate", "20260101", "--prompt", "The"])
    finally:
        descriptor.write_text(kept)
    assert result.exit_code == 1
    said = (f"run 20260101-000000-abcdef: the folder of model 'counts' ({folder}) holds another "
            "output: descriptor.json is another output's (train-another)")  # fmt: skip
    assert said in result.stderr
    again = CliRunner().invoke(app, ["generate", "20260101", "--prompt", "The"])
    assert again.exit_code == 0, again.stderr


def test_generate_from_a_failed_run_says_which_model_answers(recorded_run, monkeypatch):
    """A ladder whose top failed answered with the model below it, without a word."""
    from flows.cli import app

    home, trained, tokenizer = recorded_run
    monkeypatch.setenv("LMFORGE_HOME", str(home))
    registry = RunRegistry(Workspace.from_env().registry_path)
    registry.start_run({"run_id": "20250202-000000-0d0e0f", "status": "running",
                        "started_at": datetime.now()})  # fmt: skip
    lower = ModelRecord("counts", "bigram-count", trained.digest, trained.path,
                        tokenizer.digest, "corpus", {}, {})  # fmt: skip
    registry.finish_run("20250202-000000-0d0e0f", "failed", datetime.now(), [], models=[lower])
    runner = CliRunner()
    result = runner.invoke(
        app, ["generate", "20250202", "--prompt", "The", "--max-new-tokens", "3"]
    )
    assert result.exit_code == 0, result.output
    said = " ".join(result.stderr.split())
    assert ("note: run 20250202-000000-0d0e0f is failed; using the last model it trained, "
            "'counts' (--model picks another)") in said  # fmt: skip
    named = runner.invoke(app, ["generate", "20250202", "--model", "counts", "--prompt", "The",
                                "--max-new-tokens", "3"])  # fmt: skip
    assert named.exit_code == 0 and "note:" not in named.stderr
    completed = runner.invoke(app, ["generate", "20260101", "--prompt", "The",
                                    "--max-new-tokens", "3"])  # fmt: skip
    assert completed.exit_code == 0 and "note:" not in completed.stderr


def test_the_evaluate_stage_names_an_eval_prompt_the_tokenizer_cannot_encode(
    recorded_run, monkeypatch
):
    """It failed after scoring, with the tokenizer's message alone: nothing said that a prompt
    of eval.prompts, not the corpus, held the character."""
    from lm.eval_config import EvalConfig
    from tasks.evaluate import evaluate_task

    home, trained, tokenizer = recorded_run
    monkeypatch.setenv("LMFORGE_HOME", str(home))
    shards = Descriptor("encode", "s", "artifacts", "shards")
    tokenizer_d = Descriptor("tokenizer", "t", "artifacts/tokenizer", tokenizer.digest)
    config = EvalConfig(prompts=["The river", "日本"], samples=2, device="cpu")
    with pytest.raises(
        TokenizerError, match=r"eval\.prompts\[1\] '日本': .*cannot encode: '日', '本'"
    ):
        evaluate_task.fn(trained, shards, tokenizer_d, config)


# -- model folders whose parts no longer fit ---------------------------------------------------


@pytest.fixture(scope="module")
def trained_gpt(recorded_run):
    """A tiny GPT trained for two steps on the recorded run's shards and tokenizer."""
    from tasks.train import train_task

    home, _, tokenizer = recorded_run
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("LMFORGE_HOME", str(home))
        trained = train_task.fn(
            Descriptor("encode", "s", "artifacts", "shards"),
            Descriptor("tokenizer", "t", "artifacts/tokenizer", tokenizer.digest),
            GPTConfig(block_size=16, n_layer=1, n_head=2, n_embd=16),
            TrainConfig(max_steps=2, block_size=16, micro_batch=4, global_batch=4, eval_every=1,
                        eval_batches=1, warmup_steps=0, device="cpu", compile=False),
        )  # fmt: skip
    return home / trained.path


def copied_model(source, tmp_path):
    folder = tmp_path / "model"
    shutil.copytree(source, folder)
    return folder


def swap_tokenizer(folder, tokenizer) -> None:
    """Put `tokenizer` where the folder's own was, as a user copying one over it would."""
    shutil.rmtree(folder / "tokenizer")
    (folder / "tokenizer").mkdir()
    tokenizer.save(folder / "tokenizer")


def generate_in(folder, monkeypatch):
    from flows.cli import app

    monkeypatch.setenv("LMFORGE_HOME", str(folder.parent))
    return CliRunner().invoke(app, ["generate", str(folder), "--prompt", "The river"])


def test_a_tokenizer_of_the_same_size_swapped_in_is_refused_by_its_digest(
    recorded_run, tmp_path, monkeypatch
):
    """Another tokenizer of as many tokens loaded without a complaint, and the model, reading
    ids that stand for other characters, generated garbage."""
    home, trained, tokenizer = recorded_run
    folder = copied_model(home / trained.path, tmp_path)
    other = char_tokenizer("".join([*tokenizer.chars[1:], "§"]))  # one character replaced
    assert other.vocab_size == tokenizer.vocab_size and other.digest != tokenizer.digest
    swap_tokenizer(folder, other)
    result = generate_in(folder, monkeypatch)
    assert result.exit_code == 1 and result.stdout == ""
    message = result.stderr.strip()
    assert "\n" not in message
    assert message.startswith(
        f"error: {folder / 'tokenizer' / 'tokenizer.json'} is not the tokenizer the model in "
        f"{folder} was trained with (its digest is {other.digest[:12]}, best/checkpoint.json "
        f"records {tokenizer.digest[:12]})"
    )


def test_a_checkpoint_without_a_tokenizer_digest_loads_and_is_checked_by_vocabulary_size(
    recorded_run, tmp_path
):
    """Checkpoints written before the digest was recorded still load with their own tokenizer;
    one of another size was PyTorch's size-mismatch list, which named no tokenizer."""
    import json

    from lm.evaluate import CheckpointError, load_trained

    home, trained, tokenizer = recorded_run
    folder = copied_model(home / trained.path, tmp_path)
    info_file = folder / "best" / "checkpoint.json"
    info = json.loads(info_file.read_text())
    del info["tokenizer_digest"]
    info_file.write_text(json.dumps(info))
    model, loaded = load_trained(folder)
    assert loaded.digest == tokenizer.digest
    assert "".join(generate(model, loaded, "The river", GREEDY)) == expected_text(
        home, trained, "The river", GREEDY
    )
    smaller = char_tokenizer("".join(tokenizer.chars[:-3]))
    swap_tokenizer(folder, smaller)
    expected = (
        f"{folder / 'tokenizer' / 'tokenizer.json'} is not the tokenizer the model in {folder} "
        f"was trained with (it has {smaller.vocab_size} tokens, the weights were trained on "
        f"{tokenizer.vocab_size})"
    )
    with pytest.raises(CheckpointError, match=re.escape(expected)):
        load_trained(folder)


def test_a_model_json_edited_to_other_shapes_names_the_first_tensor_that_differs(
    trained_gpt, tmp_path, monkeypatch
):
    """It was PyTorch's multi-line list of every size mismatch, after a traceback-like
    'Error(s) in loading state_dict'."""
    import json

    folder = copied_model(trained_gpt, tmp_path)
    settings = json.loads((folder / "model.json").read_text())
    vocab = len(json.loads((folder / "tokenizer" / "tokenizer.json").read_text())["chars"]) + 2
    (folder / "model.json").write_text(json.dumps(settings | {"n_embd": 24}))
    wider = generate_in(folder, monkeypatch)
    assert wider.exit_code == 1 and wider.stdout == ""
    assert "\n" not in wider.stderr.strip()
    assert wider.stderr.startswith(
        f"error: {folder / 'model.json'} does not match the weights in "
        f"{folder / 'best' / 'model.pt'}: token_embedding.weight is [{vocab}, 16] in the "
        f"weights but [{vocab}, 24] by model.json; "
    )
    # Far wider: said the same way, before the model is built (it asked for terabytes).
    (folder / "model.json").write_text(json.dumps(settings | {"n_embd": 1 << 22, "n_head": 1}))
    huge = generate_in(folder, monkeypatch)
    assert huge.exit_code == 1 and f"but [{vocab}, 4194304] by model.json; " in huge.stderr
    (folder / "model.json").write_text(json.dumps(settings | {"n_layer": 2}))
    deeper = generate_in(folder, monkeypatch)
    assert deeper.exit_code == 1
    assert ": blocks.1.norm_1.weight [16] is not in the weights, but model.json has it" in (
        deeper.stderr
    )
    (folder / "model.json").write_text(json.dumps(settings | {"pos": "rope"}))
    rotary = generate_in(folder, monkeypatch)
    assert rotary.exit_code == 1
    assert (
        ": position_embedding.weight [16, 16] is in the weights, but the model of model.json has "
        "no such tensor; "
    ) in rotary.stderr


def test_a_model_json_edited_to_another_kind_is_one_line_naming_its_first_problems(
    trained_gpt, tmp_path, monkeypatch
):
    """Pydantic's message took three lines a problem, and a GPT's keys under another kind are
    a dozen problems."""
    import json

    folder = copied_model(trained_gpt, tmp_path)
    settings = json.loads((folder / "model.json").read_text())
    (folder / "model.json").write_text(json.dumps(settings | {"kind": "mlp"}))
    result = generate_in(folder, monkeypatch)
    assert result.exit_code == 1
    assert "\n" not in result.stderr.strip()
    extra = "Extra inputs are not permitted"
    assert result.stderr.strip() == (
        f"error: {folder / 'model.json'}: not a valid model description (preset: {extra}; "
        f"block_size: {extra}; n_layer: {extra}; and 12 more)"
    )


def test_generation_puts_a_training_model_back_in_training_mode_however_it_ends():
    torch.manual_seed(0)
    model = build_model(GPTConfig(block_size=16, n_layer=1, n_head=2, n_embd=16, dropout=0.5), 50)
    sampling = SamplingConfig(temperature=1.0, max_new_tokens=12, seed=3)
    # Every token is sampled without dropout; the model trains again afterwards.
    modes = [model.training for _ in generate_ids(model.train(), [1, 2], sampling, eot_id=-1)]
    assert modes == [False] * 12 and model.training
    stopped = generate_ids(model, [1, 2], sampling, eot_id=-1)
    next(stopped)
    stopped.close()  # a reader that stops early
    assert model.training
    list(generate_ids(model.eval(), [1, 2], sampling, eot_id=-1))
    assert not model.training  # a model in eval mode stays there


def test_chat_says_a_long_error_on_one_line(recorded_run):
    """Each bad line's error is one stderr line, however long (piped stderr is 200 columns):
    a prompt of many characters the tokenizer lacks was wrapped into two."""
    from flows.cli import app

    home, trained, _ = recorded_run
    unknown = "".join(chr(code) for code in range(0x4E00, 0x4E00 + 120))  # no CJK in DOCS
    result = CliRunner().invoke(
        app, ["chat", str(home / trained.path), "--max-new-tokens", "5"],
        input=f"{unknown}\n".encode(), env={"LMFORGE_HOME": str(home)},
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    errors = result.stderr.splitlines()
    assert len(errors) == 1 and errors[0].startswith("error: line 1: the prompt has characters")


def test_the_repetition_penalty_starts_from_the_penalized_ids_not_the_whole_context():
    """`generate` feeds the end-of-text mark before the prompt but penalizes only the prompt:
    penalizing the mark too made ending a text less likely in every sample."""
    from lm.models.base import LanguageModel

    class Preferences(LanguageModel):  # the same next-token logits after any text
        block_size, vocab_size = 8, 3

        def __init__(self):
            super().__init__()
            self.logits = torch.nn.Parameter(torch.tensor([2.0, 1.0, 0.5]))

        def forward(self, idx, targets=None):
            return self.logits.expand(*idx.shape, 3), None

    sampling = SamplingConfig(temperature=0.0, repetition_penalty=4.0, max_new_tokens=3)
    ended = list(generate_ids(Preferences(), [0, 2], sampling, eot_id=0, penalized=[2]))
    assert ended == []  # end-of-text (id 0), unpenalized, is the likeliest
    # Penalizing the whole context: 2 / 4 < 1, then, with 1 penalized as well, 1 / 4 < 2 / 4.
    assert list(generate_ids(Preferences(), [0, 2], sampling, eot_id=0)) == [1]


def test_top_p_keeps_no_token_once_the_kept_ones_reach_p_exactly():
    """Four equally likely tokens (0.25 each, exact in float32): p = 0.5 is reached by two of
    them, so exactly two are sampled; keeping a token whose predecessors' sum equals p would
    keep three."""
    generator = torch.Generator().manual_seed(0)
    sampling = SamplingConfig(temperature=1.0, top_p=0.5)
    drawn = {choose_next(torch.zeros(4), [], sampling, generator) for _ in range(300)}
    assert len(drawn) == 2


def test_a_chat_reply_ends_at_its_first_newline_even_one_that_ends_a_piece(monkeypatch, capsys):
    import lm.generate
    from flows.generate_cli import _stream

    pieces = ["The", " end\n", "More", "\n"]  # a subword piece may end with the newline
    monkeypatch.setattr(lm.generate, "generate", lambda *args: iter(pieces))
    _stream(None, None, "", None, echo=False, one_line=True)
    assert capsys.readouterr().out == "The end\n"
    _stream(None, None, "", None, echo=False, one_line=False)  # --multiline
    assert capsys.readouterr().out == "The end\nMore\n\n"


def test_chat_reads_a_closed_stdin_as_an_empty_one(recorded_run):
    """`lmforge chat RUN <&-` (a daemon's closed stdin: Python's `sys.stdin` is None) answers
    nothing, as `< /dev/null` does, with no AttributeError's traceback."""
    home, trained, _ = recorded_run
    env = dict(os.environ) | {"LMFORGE_HOME": str(home)}
    command = lmforge_command("chat", str(home / trained.path), "--max-new-tokens", "5")
    result = subprocess.run(["sh", "-c", 'exec "$@" <&-', "sh", *command], capture_output=True,
                            text=True, timeout=300, cwd=REPO, env=env)  # fmt: skip
    assert result.returncode == 0 and result.stdout == "" and result.stderr == ""
