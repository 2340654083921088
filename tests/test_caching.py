"""Stage cache keys cover the code that decides a stage's output: an edit to a helper module
the training loop imports must be a new key, not a stale model served from the cache."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tasks import evaluate as evaluate_stage
from tasks import train as train_stage
from tasks.caching import REPO_ROOT, module_sources


def imported_library_files(*modules: str) -> set[str]:
    """The `lm`/`storage` files a fresh interpreter has loaded after importing `modules`: what
    Python itself says the code depends on (module-level imports only)."""
    script = (
        f"import json, sys\nfor name in {list(modules)!r}: __import__(name)\n"
        "print(json.dumps([m.__file__ for n, m in sys.modules.items()\n"
        "    if n.split('.')[0] in ('lm', 'storage') and getattr(m, '__file__', None)]))"
    )
    loaded = subprocess.run([sys.executable, "-c", script], cwd=REPO_ROOT, check=True,
                            capture_output=True, text=True).stdout  # fmt: skip
    files = {str(Path(f).relative_to(REPO_ROOT)) for f in json.loads(loaded)}
    return {f for f in files if not f.endswith("__init__.py")}


def test_module_sources_follow_imports_to_every_helper_module():
    sources = module_sources("lm.train_worker")
    for helper in ("lm/train.py", "lm/batches.py", "lm/weight_average.py", "lm/cpu_features.py",
                   "lm/checkpoints.py", "lm/models/gpt.py"):  # fmt: skip
        assert helper in sources
    assert all((REPO_ROOT / path).is_file() for path in sources)
    assert not any(path.startswith(("tasks/", "flows/")) for path in sources)
    assert module_sources("lm.checkpoints") == ("lm/checkpoints.py", "lm/strict_model.py",
                                                "lm/train_config.py")  # fmt: skip


@pytest.mark.parametrize(
    ("stage", "modules"),
    [(train_stage, ["lm.train", "lm.train_worker", "lm.evaluate"]),
     (evaluate_stage, ["lm.evaluate", "lm.generate", "lm.train"])],
    ids=["train", "evaluate"],
)  # fmt: skip
def test_a_stage_code_digest_covers_every_library_file_its_code_loads(stage, modules):
    assert imported_library_files(*modules) <= set(stage.CODE)


@pytest.mark.parametrize(
    "name", ["ingest", "clean", "tokenizer", "encode", "word2vec", "train", "evaluate"]
)
def test_a_stage_code_digest_covers_its_own_task_module(name):
    # The encode task (its doc_id shuffle, its ordered split), word2vec's, ingest's and clean's
    # were left out: edited, they served outputs the old code had made.
    import importlib

    assert f"tasks/{name}.py" in importlib.import_module(f"tasks.{name}").CODE


def test_the_word2vec_code_digest_covers_the_code_that_writes_and_digests_the_vectors():
    """`lm.models.embeddings` (imported inside the task) writes the vectors file, reads it back
    for new probes and digests the vectors (`vectors_digest`, what the train stage keys on): an
    edit to it, or to `lm.token_bytes` it reads pieces with, kept the word2vec key, and the
    vectors the old code had written were served."""
    from tasks import word2vec as word2vec_stage

    assert {"lm/models/embeddings.py", "lm/token_bytes.py"} <= set(word2vec_stage.CODE)


def test_the_scores_key_leaves_out_the_sample_settings_when_every_token_is_scored():
    """`eval.batches` and `eval.seed` draw the windows of `scoring = "sample"` only: under
    whole or per-document scoring a new seed scored every split again, for the same numbers."""
    from lm.eval_config import EvalConfig
    from storage.artifacts import Descriptor
    from tasks.evaluate import scores_key

    trained, shards, tokenizer = (Descriptor(stage, "k", f"{stage}/k", stage * 8)
                                  for stage in ("train", "encode", "tokenizer"))  # fmt: skip

    def key(**config) -> str:
        return scores_key(trained, shards, tokenizer, EvalConfig(**config))

    for scoring in ("auto", "whole", "documents"):
        assert key(scoring=scoring) == key(scoring=scoring, seed=5, batches=7)
    assert key(scoring="sample") != key(scoring="sample", seed=5)
    assert key(scoring="sample") != key(scoring="sample", batches=7)
    assert key(scoring="whole") != key(scoring="whole", window=16)


def test_auto_device_and_precision_are_keyed_by_what_they_pick_on_this_machine(monkeypatch):
    """`device = "auto"` and `"cpu"` on a CPU machine are one computation: two keys trained
    and scored it twice (h149). And "auto" on a GPU machine is another computation (CUDA,
    bf16), which a workspace shared with a CPU machine must not hand out as the CPU's."""
    from lm.cpu_features import cpu_has_native_bf16
    from lm.eval_config import EvalConfig
    from lm.train_config import TrainConfig
    from storage.artifacts import Descriptor
    from tasks.evaluate import evaluate_key, scores_key
    from tasks.train import train_settings_digest

    trained, shards, tokenizer = (Descriptor(stage, "k", f"{stage}/k", stage * 8)
                                  for stage in ("train", "encode", "tokenizer"))  # fmt: skip

    def train(**settings) -> str:
        return train_settings_digest(TrainConfig(**settings))

    def scored(**settings) -> tuple[str, str]:
        config = EvalConfig(**settings)
        return (scores_key(trained, shards, tokenizer, config),
                evaluate_key(trained, shards, tokenizer, config))  # fmt: skip

    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    cpu_precision = "bf16" if cpu_has_native_bf16() else "fp32"
    assert train() == train(device="cpu") == train(device="cpu", precision=cpu_precision)
    assert train() != train(precision="fp32" if cpu_precision == "bf16" else "bf16")
    assert scored() == scored(device="cpu") == scored(device="cpu", precision="fp32")
    on_cpu = train(), scored()
    monkeypatch.setattr("torch.cuda.is_available", lambda: True)
    assert train() == train(device="cuda", precision="bf16") != on_cpu[0]
    assert train(device="cpu") == on_cpu[0]
    assert scored() == scored(device="cuda", precision="bf16") != on_cpu[1]
    assert scored(device="cpu") == on_cpu[1]


def test_the_ingest_key_leaves_out_how_long_a_download_may_wait(tmp_path):
    """`ingest.url_timeout_s` decides whether a fetch succeeds, never what it reads: a new
    timeout read every source again (h149)."""
    from lm.config import IngestConfig, SourceConfig
    from tasks.ingest import ingest_key

    (tmp_path / "a.txt").write_text("Some text to read.\n")
    sources = [SourceConfig(path=str(tmp_path / "a.txt"))]

    def key(**settings) -> str:
        return ingest_key(IngestConfig(sources=sources, **settings))

    assert key() == key(url_timeout_s=5.0)
    assert key() != key(max_document_mb=1.0)


def test_the_clean_key_holds_only_the_split_settings_the_corpus_holds():
    """`split.shuffle` orders the shards, and under `ordered` the fractions cut the token
    stream: changing them re-ran clean to a byte-identical corpus (a second copy on disk)."""
    from lm.config import CleanConfig, SplitConfig
    from storage.artifacts import Descriptor
    from tasks.clean import clean_key

    raw = Descriptor("ingest", "k", "raw/k", "d" * 64)

    def key(**split) -> str:
        return clean_key(raw, CleanConfig(), SplitConfig(**split))

    assert key() == key(shuffle=True)
    assert key(method="ordered") == key(method="ordered", val=0.2, test=0.0)
    assert key() != key(val=0.1) != key(val=0.1, test=0.1)  # hash: the fractions assign
    assert key(method="random") != key()
    assert key(method="ordered") != key(method="hash")
    # The worker count only spreads the annotation: the same corpus, byte for byte.
    assert clean_key(raw, CleanConfig(workers=2), SplitConfig()) == key()
    assert clean_key(raw, CleanConfig(min_chars=5), SplitConfig()) != key()


def test_a_key_is_shown_by_its_stage_and_12_digest_characters():
    """`key[:12]` left "word2vec-vec" of a vectors key and "evaluate-ceb" of a scores key:
    three digits of the folder the artifact is in, or none."""
    from lm.artifact_keys import short_key

    digest = "ceb0123456789abcdef0123456789abcdef01234"
    assert short_key(f"evaluate-{digest}") == "evaluate-ceb012345678"
    assert short_key(f"word2vec-vectors-{digest}") == "word2vec-vectors-ceb012345678"
    assert short_key(digest) == digest[:12] and short_key("") == ""


def test_every_ingredient_of_a_stage_key_changes_it_and_nothing_else_does():
    """A cache key that left out the code digest, the stage's version, its settings or an
    upstream digest served an output the old code or the old data had made."""
    from tasks.caching import stage_key

    base = ("train", 3, "c" * 64, ["u" * 64, "v" * 64], "d" * 64)
    key = stage_key(*base)
    assert key == stage_key(*base) and key.startswith("train-") and len(key) == len("train-") + 40
    changed = [
        ("evaluate", 3, "c" * 64, ["u" * 64, "v" * 64], "d" * 64),
        ("train", 4, "c" * 64, ["u" * 64, "v" * 64], "d" * 64),
        ("train", 3, "e" * 64, ["u" * 64, "v" * 64], "d" * 64),
        ("train", 3, "c" * 64, ["w" * 64, "v" * 64], "d" * 64),
        ("train", 3, "c" * 64, ["u" * 64, "w" * 64], "d" * 64),
        ("train", 3, "c" * 64, ["v" * 64, "u" * 64], "d" * 64),
        ("train", 3, "c" * 64, ["u" * 64, "v" * 64], "e" * 64),
    ]
    keys = {stage_key(*parts) for parts in changed}
    assert key not in keys and len(keys) == len(changed)
    # Parts are kept apart: a digest moved across a boundary is another key.
    assert stage_key("train", 3, "ab", ["c"], "d") != stage_key("train", 3, "a", ["bc"], "d")


def test_a_code_digest_follows_each_file_s_code_and_name(tmp_path, monkeypatch):
    from tasks import caching

    monkeypatch.setattr(caching, "REPO_ROOT", tmp_path)
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "a.py").write_text("x = 1\n")
    (tmp_path / "pkg" / "b.py").write_text("y = 2\n")

    def digest(*paths: str) -> str:
        return caching.code_digest.__wrapped__(*paths)

    before = digest("pkg")
    assert before == digest("pkg") == digest("pkg/b.py", "pkg/a.py") != digest("pkg/a.py")
    (tmp_path / "pkg" / "b.py").write_text("y = 3\n")
    edited = digest("pkg")
    assert edited != before
    (tmp_path / "pkg" / "b.py").rename(tmp_path / "pkg" / "c.py")  # same bytes, another module
    assert digest("pkg") != edited


def test_a_code_digest_ignores_comments_docstrings_and_layout_but_not_strings(
    tmp_path, monkeypatch
):
    """A comment in `lm/config.py` (loaded by nearly every stage) trained every model again
    (h149): the digest is of the code, not its layout. A message string is code: it is what a
    stage writes or says."""
    from tasks import caching

    monkeypatch.setattr(caching, "REPO_ROOT", tmp_path)
    module = tmp_path / "m.py"

    def digest(source: str) -> str:
        module.write_text(source)
        return caching.code_digest.__wrapped__("m.py")

    plain = digest('def f(x):\n    return x + 1\n\nclass C:\n    y = "a"\n')
    documented = digest(
        '"""Module."""\n# a comment\ndef f(x):\n    """Why."""\n    return (x +\n'
        '            1)  # one more\n\n\nclass C:\n    """A class."""\n    y = "a"\n'
    )
    assert documented == plain
    assert digest('def f(x):\n    """Only a docstring."""\n') == digest("def f(x):\n    pass\n")
    assert digest('def f(x):\n    return x + 2\n\nclass C:\n    y = "a"\n') != plain
    assert digest('def f(x):\n    return x + 1\n\nclass C:\n    y = "b"\n') != plain
    # A string that is not the first statement is code, and so is a file that does not parse.
    assert digest('def f(x):\n    x = 1\n    "s"\n') != digest("def f(x):\n    x = 1\n")
    assert digest("def f(:\n") != digest("def f(: # \n")


def test_a_code_digest_is_the_same_on_every_python(tmp_path):
    """`ast.dump` changes with Python (3.12 dumps a function's `type_params=[]`, 3.13 leaves out
    every empty field): every key changed with an upgrade of Python, and a `train-join` node on
    another one was refused as running other code. Empty fields, which new ones are, are left
    out on every Python."""
    import ast

    from tasks import caching

    module = tmp_path / "m.py"
    module.write_text("def f(x):\n    return x\n")
    assert caching.code_of(module) == (
        b"Module(body=[FunctionDef(name='f', args=arguments(args=[arg(arg='x')]), "
        b"body=[Return(value=Name(id='x', ctx=Load()))])])"
    )
    tree = ast.parse(module.read_text())
    function = tree.body[0]
    later = type("FunctionDef", (ast.FunctionDef,),
                 {"_fields": (*ast.FunctionDef._fields, "added_later")})  # fmt: skip
    moved = later(**{name: getattr(function, name) for name in ast.FunctionDef._fields},
                  added_later=[])  # fmt: skip
    assert caching._canonical(ast.Module(body=[moved], type_ignores=[])) == caching._canonical(tree)


def test_a_file_shared_by_several_stages_digests_is_parsed_once(tmp_path, monkeypatch):
    """Each stage's digest covers the modules it imports, most of them shared: a run parsed
    the same file again for each stage (263 parses of 107 files, 4 s of a cached run)."""
    import ast

    from tasks import caching

    monkeypatch.setattr(caching, "REPO_ROOT", tmp_path)
    for name in ("a", "b", "c"):
        (tmp_path / f"{name}.py").write_text(f"{name} = {name!r}  # {tmp_path}\n")
    parsed = []
    monkeypatch.setattr(ast, "parse", lambda source, *a, **k: parsed.append(source)
                        or ast.Module(body=[], type_ignores=[]))  # fmt: skip
    for paths in (("a.py", "b.py"), ("b.py", "c.py"), ("a.py", "c.py")):
        caching.code_digest.__wrapped__(*paths)
    assert len(parsed) == 3


def test_module_sources_follow_plain_imports_and_packages(tmp_path, monkeypatch):
    from tasks import caching

    monkeypatch.setattr(caching, "REPO_ROOT", tmp_path)
    (tmp_path / "lm" / "sub").mkdir(parents=True)
    (tmp_path / "lm" / "top.py").write_text("import lm.plain\nfrom lm import sub\n")
    (tmp_path / "lm" / "plain.py").write_text("def f():\n    from lm.inner import g\n")
    (tmp_path / "lm" / "inner.py").write_text("from . import plain\n")
    (tmp_path / "lm" / "sub" / "__init__.py").write_text("")
    assert caching.module_sources("lm.top") == (
        "lm/inner.py",
        "lm/plain.py",
        "lm/sub/__init__.py",
        "lm/top.py",
    )


# Two values of each training setting that makes the model (its weights, its best checkpoint).
MODEL_MAKING = {
    "max_steps": (200, 201), "micro_batch": (12, 6), "global_batch": (12, 24),
    "block_size": (64, 32), "samples": ("windows", "documents"), "learning_rate": (1e-3, 2e-3),
    "min_lr_ratio": (0.1, 0.2), "schedule": ("cosine", "wsd"), "warmup_steps": (20, 10),
    "decay_fraction": (0.2, 0.3), "weight_decay": (0.1, 0.0), "beta1": (0.9, 0.8),
    "beta2": (0.95, 0.99), "grad_clip": (1.0, 0.5), "ema_decay": (0.0, 0.9),
    "eval_every": (50, 25), "eval_batches": (8, 4), "patience": (0, 3), "min_delta": (0.0, 0.01),
    "compile": (False, True), "seed": (1337, 1),
}  # fmt: skip
# Keyed otherwise: as run here, over all machines, by the weights (the tests above).
KEYED_OTHERWISE = {"device", "precision", "nproc_per_node", "nnodes", "parallel", "init_from"}


def test_every_training_setting_that_makes_the_model_is_in_the_train_key_and_no_bookkeeping():
    """A setting dropped from the key (a new `train.seed`, say) served the model of the old
    value; bookkeeping put in it trained the same model again. Every field is sorted into one
    or the other, so that a new one must be too."""
    from lm.train_config import BOOKKEEPING, TrainConfig
    from tasks.train import train_settings_digest

    assert set(TrainConfig.model_fields) == {*MODEL_MAKING, *BOOKKEEPING, *KEYED_OTHERWISE}
    for name, (one, other) in MODEL_MAKING.items():
        assert train_settings_digest(TrainConfig(**{name: one})) != train_settings_digest(
            TrainConfig(**{name: other})
        ), name
    bookkept = {"checkpoint_every": 7, "keep_checkpoints": 5, "master_addr": "node0",
                "master_port": 29600, "join_timeout_s": 30}  # fmt: skip
    assert set(bookkept) == set(BOOKKEEPING)
    for name, value in bookkept.items():
        assert train_settings_digest(TrainConfig(**{name: value})) == train_settings_digest(
            TrainConfig()
        ), name


def test_the_evaluate_and_scores_keys_follow_the_model_the_shards_and_the_tokenizer():
    """A scores key without the trained model's digest handed one model's bits per byte to
    another trained on the same shards; without the shards' digest, the old text's scores."""
    from lm.eval_config import EvalConfig, SamplingConfig
    from storage.artifacts import Descriptor
    from tasks.evaluate import evaluate_key, scores_key

    def described(stage: str, digest: str) -> Descriptor:
        return Descriptor(stage, "k", f"{stage}/k", digest)

    inputs = [described(stage, stage * 8) for stage in ("train", "encode", "tokenizer")]
    config = EvalConfig(device="cpu", precision="fp32")
    for key_of in (scores_key, evaluate_key):
        key = key_of(*inputs, config)
        for index in range(3):
            changed = list(inputs)
            changed[index] = described(inputs[index].kind, "other" * 8)
            assert key_of(*changed, config) != key, (key_of.__name__, index)
        assert key_of(*inputs, config.model_copy(update={"splits": ["val"]})) != key
        assert key_of(*inputs, config.model_copy(update={"baseline_smoothing": 0.5})) != key
    # The samples' settings are the evaluate key's, never the scores'.
    hotter = config.model_copy(update={"sampling": SamplingConfig(temperature=1.5), "samples": 1,
                                       "prompts": ["The"]})  # fmt: skip
    assert scores_key(*inputs, hotter) == scores_key(*inputs, config)
    assert evaluate_key(*inputs, hotter) != evaluate_key(*inputs, config)


def test_an_edit_to_the_sampling_code_draws_new_samples_without_scoring_again(monkeypatch):
    """`lm.generate` draws the samples, never a score: in the scores key, an edit to it scored
    every split again (minutes on a large model) for the same numbers."""
    from lm.eval_config import EvalConfig
    from storage.artifacts import Descriptor
    from tasks import evaluate
    from tasks.evaluate import evaluate_key, scores_key

    inputs = [Descriptor(stage, "k", f"{stage}/k", stage * 8)
              for stage in ("train", "encode", "tokenizer")]  # fmt: skip
    config = EvalConfig(device="cpu", precision="fp32")
    keys = []
    for generate_code in ("old", "edited"):
        monkeypatch.setattr(evaluate, "code_digest", lambda *paths, code=generate_code: (
            code if "lm/generate.py" in paths else "scoring"))  # fmt: skip
        keys.append((scores_key(*inputs, config), evaluate_key(*inputs, config)))
    assert keys[0][0] == keys[1][0] and keys[0][1] != keys[1][1]


def test_the_train_key_follows_its_inputs_and_a_w2v_model_s_vectors_only_where_it_reads_them():
    """Without the shards' or the tokenizer's digest, a model of other tokens was served;
    without the vectors' digest, a w2v model of the old vectors. A model that reads no vectors
    (or continues a checkpoint, whose vectors it has) must not train again for new ones."""
    from lm.models.config import GPTConfig, W2VConfig
    from lm.train_config import TrainConfig
    from storage.artifacts import Descriptor
    from tasks.train import train_key

    shards, tokenizer, vectors = (Descriptor(stage, "k", f"{stage}/k", stage * 8)
                                  for stage in ("encode", "tokenizer", "word2vec"))  # fmt: skip
    other = Descriptor("x", "k", "x/k", "other" * 8)
    gpt = GPTConfig(block_size=16, n_layer=1, n_head=2, n_embd=16)
    w2v = W2VConfig(vector_size=16)
    train = TrainConfig(max_steps=4)
    for model in (gpt, w2v):
        key = train_key(shards, tokenizer, model, train, vectors)
        assert train_key(other, tokenizer, model, train, vectors) != key
        assert train_key(shards, other, model, train, vectors) != key
        assert train_key(shards, tokenizer, model, train.model_copy(update={"seed": 1}),
                         vectors) != key  # fmt: skip
    assert train_key(shards, tokenizer, w2v, train, other) != train_key(
        shards, tokenizer, w2v, train, vectors
    )
    assert train_key(shards, tokenizer, gpt, train, other) == train_key(
        shards, tokenizer, gpt, train, vectors
    )
    # A GPT trains on its own context: `train.block_size` written equal to it (the config
    # refuses another) is the same training; a model without a context of its own reads it.
    context = {"block_size": gpt.block_size}
    assert train_key(shards, tokenizer, gpt, train.model_copy(update=context)) == train_key(
        shards, tokenizer, gpt, train
    )
    assert train_key(shards, tokenizer, w2v, train.model_copy(update=context), vectors) != (
        train_key(shards, tokenizer, w2v, train, vectors)
    )
    # One process is not wrapped: ddp or fsdp, the same training; over several they differ.
    fsdp = {"parallel": "fsdp"}
    assert train_key(shards, tokenizer, gpt, train.model_copy(update=fsdp)) == train_key(
        shards, tokenizer, gpt, train
    )
    two = train.model_copy(update={"nproc_per_node": 2})
    assert train_key(shards, tokenizer, gpt, two.model_copy(update=fsdp)) != train_key(
        shards, tokenizer, gpt, two
    )


def stage_keys() -> dict:
    """Each stage's key function (by its module) with arguments for it."""
    from lm.config import CleanConfig, SplitConfig, TokenizerConfig, Word2VecConfig
    from lm.eval_config import EvalConfig
    from lm.models.config import GPTConfig
    from lm.train_config import TrainConfig
    from storage.artifacts import Descriptor

    stages = ("clean", "tokenizer", "encode", "train")
    corpus, tokenizer, shards, trained = (Descriptor(stage, "k", f"{stage}/k", stage * 8)
                                          for stage in stages)  # fmt: skip
    gpt = GPTConfig(block_size=16, n_layer=1, n_head=2, n_embd=16)
    scoring = EvalConfig(device="cpu", precision="fp32")
    return {
        "clean.clean_key": (corpus, CleanConfig(), SplitConfig()),
        "tokenizer.tokenizer_key": (corpus, TokenizerConfig()),
        "tokenizer.adopted_key": (corpus, "t", "t" * 64),
        "encode.encode_key": (corpus, tokenizer),
        "word2vec.word2vec_key": (corpus, tokenizer, Word2VecConfig()),
        "word2vec.vectors_key": (corpus, tokenizer, Word2VecConfig()),
        "increment.increment_key": (corpus, trained),
        "train.train_key": (shards, tokenizer, gpt, TrainConfig()),
        "evaluate.evaluate_key": (trained, shards, tokenizer, scoring),
        "evaluate.scores_key": (trained, shards, tokenizer, scoring),
    }


@pytest.mark.parametrize("name", list(stage_keys()))
def test_an_edit_to_a_stage_s_code_is_a_new_key(name, monkeypatch):
    """`CODE` listing every file is worth nothing if the key leaves out its digest: the
    model (or corpus, or scores) the old code made was served."""
    import importlib

    module_name, function = name.split(".")
    module = importlib.import_module(f"tasks.{module_name}")
    arguments = stage_keys()[name]
    key = getattr(module, function)(*arguments)
    monkeypatch.setattr(module, "code_digest", lambda *paths: "edited")
    assert getattr(module, function)(*arguments) != key


def test_the_train_and_evaluate_code_digests_cover_how_the_stage_reads_its_tokens():
    """The train and evaluate tasks read the shards themselves (`storage.shards.open_shard`),
    which `lm.train` does not import: left out of `CODE`, a change to how tokens are read kept
    every key."""
    assert {"storage/shards.py", "lm/tokenizer.py"} <= set(train_stage.CODE)
    assert "storage/shards.py" in evaluate_stage.SCORES_CODE
    assert set(evaluate_stage.SCORES_CODE) <= set(evaluate_stage.CODE)
