"""Bad configuration is one clear error naming the file (or the `--set` override) and the
problem, before anything runs."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from lm import memory_fit
from lm.config import ConfigError, TokenizerConfig, load_config, resolve_preset
from tests.conftest import REPO, run_cli


def test_a_config_that_is_not_utf8_names_the_file_the_byte_and_the_line(tmp_path):
    config = tmp_path / "latin1.toml"
    config.write_bytes(b'name = "x"\n[ingest]\nsources = ["caf\xe9.txt"]\n')
    with pytest.raises(ConfigError, match=r"latin1\.toml: not UTF-8 \(byte 0xe9 on line 3\)"):
        load_config(str(config))


def test_a_config_saved_with_a_byte_order_mark_loads(tmp_path):
    # tomllib refused it: "Invalid statement (at line 1, column 1)".
    config = tmp_path / "notepad.toml"
    config.write_bytes(b'\xef\xbb\xbfname = "from-notepad"\n[ingest]\nsources = ["a.txt"]\n')
    assert load_config(str(config)).name == "from-notepad"


def test_a_workspace_that_is_a_file_is_said_to_be_one(tmp_path):
    # Every command read it as "no registry yet; `lmforge run` creates it".
    home = tmp_path / "home"
    home.write_text("not a folder")
    result = run_cli("runs", check=False, home=home)
    assert result.returncode == 1
    assert result.stderr.strip() == (
        f"error: LMFORGE_HOME={home}: is a file, not a folder; point "
        "LMFORGE_HOME at a folder (it is made if it does not exist)"
    )


def test_a_workspace_under_an_unknown_user_s_home_is_one_line():
    # A traceback: "RuntimeError: Could not determine home directory."
    result = run_cli("runs", check=False, home=Path("~no-such-user-4242/ws"))
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip() == (
        "error: LMFORGE_HOME=~no-such-user-4242/ws: no home folder for '~no-such-user-4242' on "
        "this machine; give the workspace's path"
    )


def test_a_workspace_path_in_a_loop_of_links_is_one_line(tmp_path):
    (tmp_path / "a").symlink_to(tmp_path / "b")
    (tmp_path / "b").symlink_to(tmp_path / "a")
    result = run_cli("runs", check=False, home=tmp_path / "a" / "ws")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.startswith(f"error: LMFORGE_HOME={tmp_path / 'a' / 'ws'}: cannot be ")


def test_a_workspace_path_with_a_question_mark_is_refused_before_duckdb_cuts_it(tmp_path):
    # DuckDB wrote the registry's log to "…/q.wal?ws/registry.duckdb" and failed every commit.
    result = run_cli("run", "default", check=False, home=tmp_path / "q?ws")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.startswith(f"error: LMFORGE_HOME={tmp_path / 'q?ws'}: the path has a '?'")
    assert not (tmp_path / "q?ws").exists()


@pytest.mark.parametrize("empty", ['[""]', '[{ path = "  " }]'])
def test_an_empty_source_path_is_refused_not_read_as_the_current_folder(empty):
    with pytest.raises(ConfigError, match=r"'ingest\.sources\.0\.path': is empty: name a file"):
        load_config("default", [f"ingest.sources={empty}"])


def test_a_config_file_without_a_name_is_named_after_itself(tmp_path):
    """It was recorded as preset "default", mixed with the bundled preset's runs."""
    plain = tmp_path / "my-corpus.toml"
    plain.write_text('[ingest]\nsources = [{ path = "x.txt" }]\n')
    assert load_config(str(plain)).name == "my-corpus"
    assert load_config(str(plain), ['name="other"']).name == "other"
    assert load_config("default").name == "default"


def test_a_folder_given_as_the_config_is_said_to_be_a_folder(tmp_path):
    folder = tmp_path / "configs.toml"
    folder.mkdir()
    with pytest.raises(ConfigError, match=r"configs\.toml: is a folder, not a config file"):
        load_config(str(folder))


def test_batch_norm_over_a_micro_batch_of_one_row_is_refused_at_load():
    mlp = 'model={kind="mlp", context=3, n_embd=8, hiddens=[16], norm="batchnorm"}'
    one_row = ["train.micro_batch=1", "train.global_batch=1", "train.block_size=1"]
    said = r"norm \"batchnorm\" normalises over the rows of a micro-batch, and train\.micro_batch"
    with pytest.raises(ConfigError, match=said + r" × train\.block_size is 1"):
        load_config("default", [mlp, *one_row])
    load_config("default", [mlp, *one_row[:2], "train.block_size=2"])  # two rows: fine
    load_config("default", [mlp.replace("batchnorm", "layernorm"), *one_row])
    # Under FSDP each rank's running statistics drifted apart (rank 0's were saved).
    fsdp = ["train.parallel=fsdp", "train.nproc_per_node=2", "train.global_batch=64"]
    with pytest.raises(ConfigError, match=r"norm \"batchnorm\" under train\.parallel = \"fsdp\""):
        load_config("default", [mlp, *fsdp])
    load_config("default", [mlp, *fsdp[1:]])  # DDP broadcasts them
    # An ablation variant's own micro-batch of one row: trained, and scored, before.
    variants = ('ablation.variants=[{name="base"}, {name="one", train={micro_batch=1, '
                "global_batch=1, block_size=1}}]")  # fmt: skip
    with pytest.raises(ConfigError, match=r"ablation variant 'one': norm \"batchnorm\""):
        load_config("default", [mlp, "train.block_size=2", variants])
    # A variant's bad value is its own error (a traceback when compared with 2 unvalidated).
    text = 'ablation.variants=[{name="base"}, {name="t", train={micro_batch="4"}}]'
    settings = load_config("default", [mlp, "train.block_size=2", text])
    with pytest.raises(ValueError, match=r"ablation variant 't': 'train\.micro_batch'"):
        settings.ablation_runs()


@pytest.mark.parametrize(
    "change",
    ['{name="v", model={kind="w2v"}}', '{name="v", model={block_size="abc"}}',
     '{name="v", model={preset=[1]}}'],
)  # fmt: skip
def test_a_variant_s_invalid_model_is_named_by_ablation_runs_not_a_traceback_at_load(change):
    """The load-time checks of variants' models (word2vec vectors, eval.window, batch norm)
    read unvalidated copies: a w2v kind over a gpt raised AttributeError, a text block_size
    TypeError."""
    settings = load_config(
        "ablation", ["eval.window=32", f'ablation.variants=[{{name="base"}}, {change}]']
    )
    with pytest.raises(
        ValueError, match=r"ablation variant 'v': 'model\.(kind|block_size|preset)'"
    ):
        settings.ablation_runs()


@pytest.mark.parametrize(("preset", "said"), [
    ("[1]", r"'model\.preset': Input should be a valid string"),
    ("{a=1}", r"'model\.preset': Input should be a valid string"),
    ('""', r"unknown gpt preset '' \(presets: atinuke, modern\)"),
])  # fmt: skip
def test_a_gpt_preset_that_is_not_a_preset_s_name_is_refused(preset, said):
    """A list or table raised "unhashable type" from the preset lookup; an empty name was
    taken as no preset."""
    with pytest.raises(ConfigError, match=said):
        load_config("default", [f"model.preset={preset}"])


@pytest.mark.parametrize("kind", ["mlp", "w2v"])
@pytest.mark.parametrize("hiddens", [[0], [200, -5]])
def test_a_hidden_layer_of_no_units_is_refused(kind, hiddens):
    from pydantic import ValidationError

    from lm.models.config import MLPConfig, W2VConfig

    config = {"mlp": MLPConfig, "w2v": W2VConfig}[kind]
    with pytest.raises(ValidationError, match="greater than or equal to 1"):
        config(hiddens=hiddens)
    assert config(hiddens=[]).hiddens == []  # no hidden layer: embeddings straight to logits


@pytest.mark.parametrize(
    "override, expected",
    [
        ("name=", "no value after '=' (an empty string is written name=\"\")"),
        ("train.=3", "expected KEY.PATH=VALUE"),
        ("clean..workers=1", "expected KEY.PATH=VALUE"),
        ("clean.quality.max_top_ngram_char_fraction=[0.2, 0.1,", "not a valid TOML value"),
        ('name="unterminated', "not a valid TOML value"),
    ],
)
def test_a_malformed_override_is_an_error_naming_it_not_a_string(override, expected):
    # `name=` set the run's name to "" and a broken array became a string that failed, if at
    # all, as a value of the wrong type.
    with pytest.raises(ConfigError) as caught:
        load_config("default", [override])
    assert str(caught.value).startswith(f"override '{override}': {expected}")


def test_a_bare_word_override_is_a_string():
    assert load_config("default", ["model.pos=rope", "name= my run "]).name == "my run"


@pytest.mark.parametrize(
    "override, expected",
    [
        ("modle.kind=gpt", "unknown key 'modle' (did you mean 'model'?)"),
        ("train.max_step=3", "unknown key 'train.max_step' (did you mean 'train.max_steps'?)"),
        ("model.n_layr=3", "unknown key 'model.n_layr' (did you mean 'model.n_layer'?)"),
        ("zzz=1", "unknown key 'zzz', from --set zzz=1"),
        # nanoGPT's names, too far from these to be typos
        ("train.lr=0.1", "unknown key 'train.lr' (did you mean 'train.learning_rate'?)"),
        ("train.max_iters=5", "unknown key 'train.max_iters' (did you mean 'train.max_steps'?)"),
        ("model.lr=0.1", "unknown key 'model.lr' (did you mean 'train.learning_rate'?)"),
        # a key of another table: "unknown" alone sent a user looking for a typo
        ("train.n_layer=3", "unknown key 'train.n_layer' (a key of [model]), from --set"),
        ("tokenizer.min_words=3", "unknown key 'tokenizer.min_words' (a key of [clean.quality])"),
        ("train.window=3", "unknown key 'train.window' (a key of [word2vec] or [eval])"),
        ("model.name=x", "unknown key 'model.name' (a key of the top level), from --set"),
        # a key of a table beside it, or below the top level
        ("clean.min_words=3", "unknown key 'clean.min_words' (a key of [clean.quality])"),
        (
            "clean.quality.threshold=0.5",
            "unknown key 'clean.quality.threshold' (a key of [clean.near_dup])",
        ),
        ("max_steps=3", "unknown key 'max_steps' (a key of [train]), from --set"),
    ],
)
def test_an_unknown_key_names_the_nearest_valid_one(override, expected):
    with pytest.raises(ConfigError, match=r"default\.toml: " + re.escape(expected)):
        load_config("default", [override])


@pytest.mark.parametrize(("written", "said"), [
    ('[model]\nkind = "gpt"\n', "'ingest': required, and missing: add [ingest] with sources = "),
    ("[ingest]\n", "'ingest.sources': required, and missing: write sources = ["),
    ('[ingest]\nsources = [{ text_field = "t" }]\n', "'ingest.sources.0.path': required, and "
     "missing"),
])  # fmt: skip
def test_a_missing_table_or_key_says_what_to_write(tmp_path, written, said):
    """pydantic's "'ingest': Field required", for a config a new user started from scratch."""
    config = tmp_path / "mine.toml"
    config.write_text('name = "mine"\n' + written)
    with pytest.raises(ConfigError, match=re.escape(f"{config}: {said}")):
        load_config(str(config))


def test_an_unknown_key_in_a_ladder_entry_is_named_as_written_with_its_nearest():
    # pydantic's path is `models.2.model.mlp.hidens`: the flat table and the union tag are not
    # keys a user writes.
    with pytest.raises(ConfigError) as caught:
        load_config("names", ["models.2.hidens=[64]"])
    assert "unknown key 'models.2.hidens' (did you mean 'models.2.hiddens'?)" in str(caught.value)
    with pytest.raises(ConfigError, match=re.escape("'models.2.hiddens.0': Input should be")):
        load_config("names", ["models.2.hiddens=[0]"])


def test_keys_left_from_another_model_kind_are_said_to_be_that_kind_s():
    # The default preset's gpt keys were each an "unknown key", with no word of why.
    with pytest.raises(ConfigError) as caught:
        load_config("default", ["model.kind=mlp"])
    assert str(caught.value).endswith(
        "default.toml: model.kind is 'mlp' (from --set model.kind=mlp), but 'model.preset', "
        "'model.block_size', 'model.n_layer', 'model.n_head', 'model.n_kv_heads' are keys of "
        "kind 'gpt', not 'mlp': remove them, or start from a config written for kind 'mlp'"
    )
    with pytest.raises(ConfigError) as caught:
        load_config("names", ["models.2.kind=gpt"])
    assert "'models.2.context', 'models.2.hiddens' are keys of kind 'mlp' or 'w2v'" in str(
        caught.value
    )


def test_tokenizer_keys_of_the_other_kind_are_refused_not_ignored():
    # `vocab_size` on a char tokenizer changed nothing, silently: its vocabulary is the text's.
    with pytest.raises(ConfigError) as caught:
        load_config("names", ["tokenizer.vocab_size=100"])
    assert str(caught.value).endswith(
        "names.toml: tokenizer.kind is 'char', but tokenizer.vocab_size is a key of kinds 'bpe' "
        "and 'unigram', which a 'char' tokenizer ignores (its vocabulary is the train text's "
        "characters): remove it"
    )
    with pytest.raises(ConfigError, match=r"byte_fallback, tokenizer\.max_sentence_length are"):
        load_config("names", ["tokenizer.byte_fallback=false", "tokenizer.max_sentence_length=99"])
    # The names preset's `unknown_chars = "error"` is a char key: a bpe tokenizer ignores it.
    with pytest.raises(ConfigError) as caught:
        load_config("names", ["tokenizer.kind=bpe"])
    said = str(caught.value)
    assert "tokenizer.kind is 'bpe' (from --set tokenizer.kind=bpe), but tokenizer.unknown_" in said
    assert said.endswith("""remove it, or replace the table: --set 'tokenizer={kind="bpe"}'""")
    assert load_config("names", ['tokenizer={kind="bpe"}']).tokenizer.kind == "bpe"
    # Keys every kind reads, and defaults not written, pass; so does a stored config (every
    # field, as a run records it), which retrain validates again.
    assert load_config("names", ["tokenizer.seed=3"]).tokenizer.seed == 3
    char = load_config("default", ["tokenizer.kind=char"]).tokenizer
    assert TokenizerConfig.model_validate(char.model_dump()) == char


def test_a_model_without_a_known_kind_lists_the_kinds():
    kinds = "'bigram-count', 'bigram', 'mlp', 'w2v', 'gpt'"
    with pytest.raises(ConfigError, match=re.escape(f"'model' needs a kind (one of {kinds})")):
        load_config("default", ["model={n_layer=3}"])
    with pytest.raises(ConfigError, match=re.escape(f"unknown model kind 'gptx' (kinds: {kinds})")):
        load_config("default", ['model={kind="gptx"}'])


def test_a_problem_a_set_caused_names_that_set():
    with pytest.raises(ConfigError) as caught:
        load_config("default", ["model.n_embd=130", "train.max_steps=-1"])
    message = str(caught.value)
    assert (
        "'train.max_steps': Input should be greater than or equal to 1, from --set train.max_st"
        in message
    )
    assert "divisible by n_head (4), with --set model.n_embd=130" in message


def test_an_ablation_variant_s_unknown_key_names_the_nearest():
    settings = load_config("default", ['ablation.variants=[{name="a", model={n_emb=64}}]'])
    with pytest.raises(
        ValueError, match=re.escape("'a': unknown key 'model.n_emb' (did you mean 'model.n_embd'")
    ):
        settings.ablation_runs()
    settings = load_config("default", ['ablation.variants=[{name="b", train={max_step=3}}]'])
    with pytest.raises(
        ValueError, match=re.escape("unknown key 'train.max_step' (did you mean 'train.max_steps'")
    ):
        settings.ablation_runs()
    # A setting beside the variant's name, not in its model or train table: where it goes.
    for key, table in (("n_embd", "a model setting: write model"),
                       ("warmup_steps", "a training setting: write train")):  # fmt: skip
        said = f"unknown key 'ablation.variants.0.{key}' ({table} = {{ {key} = ... }})"
        with pytest.raises(ConfigError, match=re.escape(said)):
            load_config("default", [f'ablation.variants=[{{name="c", {key}=3}}]'])


def test_an_ablation_variant_s_preset_brings_its_switches_over_the_base_s():
    # Merged under the base's written values, a `modern` variant trained the base model.
    settings = load_config("ablation", ['ablation.variants=[{name="base"}, '
                                        '{name="modern", model={preset="modern"}}]'])  # fmt: skip
    arms = {variant: run.model for variant, _, run in settings.ablation_runs()}
    modern, base = arms["modern"], arms["base"]
    assert (modern.pos, modern.mlp, modern.norm, modern.n_kv_heads, modern.bias) == (
        "rope", "swiglu", "rmsnorm", 2, False
    )  # fmt: skip
    assert (modern.n_layer, modern.n_embd) == (base.n_layer, base.n_embd)  # the base's own
    assert base.pos == "learned"
    # A variant's own value beats its preset's.
    own = '{name="m", model={preset="modern", pos="learned"}}'
    settings = load_config("ablation", [f'ablation.variants=[{{name="base"}}, {own}]'])
    assert {v: run.model.pos for v, _, run in settings.ablation_runs()}["m"] == "learned"


def test_a_preset_given_by_set_brings_its_switches_over_the_file_s():
    # Under the file's written switches, `--set model.preset=atinuke` on the default (which
    # writes n_kv_heads = 2) trained grouped-query attention, and on shakespeare (which writes
    # every switch) the file's model, recorded as preset "atinuke".
    model = load_config("default", ["model.preset=atinuke"]).model
    assert (model.pos, model.mlp, model.norm, model.bias, model.dropout) == (
        "sinusoidal", "gelu", "layernorm", True, 0.1
    )  # fmt: skip
    assert model.kv_heads == model.n_head  # multi-head, as the preset says
    model = load_config("shakespeare", ["model.preset=atinuke"]).model
    atinuke = ("sinusoidal", "gelu", "layernorm", True)
    assert (model.pos, model.mlp, model.norm, model.bias) == atinuke
    assert (model.n_layer, model.n_embd, model.block_size) == (4, 128, 64)  # the file's own
    # A switch a --set gives wins, whatever the order of the --sets.
    for overrides in (["model.preset=atinuke", "model.n_kv_heads=1"],
                      ["model.n_kv_heads=1", "model.preset=atinuke"]):  # fmt: skip
        assert load_config("default", overrides).model.kv_heads == 1
    # The preset the file already names changes nothing of what it writes.
    assert load_config("default", ["model.preset=modern"]).model.n_kv_heads == 2
    # A ladder entry, by its index.
    gpt = load_config("names", ["models.3.preset=atinuke"]).models[3].model
    assert (gpt.pos, gpt.mlp, gpt.norm, gpt.bias) == atinuke


@pytest.mark.parametrize(
    ("variants", "said"),
    [
        # ablation.seeds set every arm's seed: served from the base's cache, the same numbers.
        ('[{name="base"}, {name="s", train={seed=99}}]', "variant 's': train.seed does not"),
        ('[{name="base"}, {name="c", train={checkpoint_every=2}}]', "train.checkpoint_every"),
        # Two ways to write multi-head attention: the same numbers, as two findings.
        ('[{name="base"}, {name="mha", model={n_kv_heads=4}}]', "'base' and 'mha' train the"),
    ],
)
def test_an_ablation_variant_that_cannot_change_the_model_is_refused(variants, said):
    settings = load_config("ablation", [f"ablation.variants={variants}"])
    with pytest.raises(ValueError, match=re.escape(said)):
        settings.ablation_runs()


def test_an_ablation_counts_the_tokens_each_variant_trains_on():
    """A variant of a shorter context trained on half the base's tokens in the same steps,
    while the config said every variant had the same token budget."""
    variants = [
        'ablation.variants=[{name = "base"}, {name = "ctx", model = {block_size = 32}}, '
        '{name = "long", train = {max_steps = 3000}}]'
    ]
    settings = load_config("ablation", variants)
    tokens = settings.ablation_tokens(settings.ablation_runs())
    base = settings.train.max_steps * settings.train.global_batch * settings.model.block_size
    assert tokens == {"base": base, "ctx": base * 32 // settings.model.block_size,
                      "long": base * 3000 // settings.train.max_steps}  # fmt: skip


def test_an_ablation_that_does_not_score_val_is_refused_before_it_trains():
    # The table is of the evaluator's val bits per byte: a KeyError after every arm trained.
    settings = load_config("ablation", ['eval.splits=["test"]'])
    with pytest.raises(ValueError, match=re.escape('eval.splits is ["test"], but an ablation')):
        settings.ablation_runs()
    load_config("ablation", ['eval.splits=["val"]']).ablation_runs()


@pytest.mark.parametrize(
    ("name", "said"),
    [("", "is empty"), ("a|b", "'a|b' has a '/', '|'"), ("a\\nb", r"'a\nb' has a '/'")],
)
def test_an_ablation_variant_name_its_labels_and_table_cannot_hold_is_refused(name, said):
    # "" labelled its models `/seed-1`; a `|` split its row of ablation.md in two.
    with pytest.raises(ConfigError, match=re.escape(f"'ablation.variants.0.name': {said}")):
        load_config("ablation", [f'ablation.variants=[{{name="{name}"}}]'])


@pytest.mark.parametrize(("name", "said"), [("  ", "is empty"), ("a\\tb", r"'a\tb' has a control")])
def test_a_preset_name_tables_and_the_registry_cannot_show_is_refused(name, said):
    # "" titled `lmforge size`'s table "size of " and recorded runs no --preset could pick.
    with pytest.raises(ConfigError, match=re.escape(f"'name': {said}")):
        load_config("default", [f'name="{name}"'])
    assert load_config("default", ['name="my run"']).name == "my run"


@pytest.mark.parametrize(
    "args, expected",
    [
        (["ablation", "default"], "default.toml: an ablation needs [[ablation.variants]]"),
        (
            ["ablation", "default", "--set", 'ablation.variants=[{name="a", model={n_emb=64}}]'],
            "default.toml: ablation variant 'a': unknown key 'model.n_emb' (did you mean "
            "'model.n_embd'?)",
        ),
        (["retrain", "names", "--set", "models=[]"], "names.toml: retrain needs a [model]"),
        (  # the same numbers twice, in two rows of the table
            [
                "ablation",
                "default",
                "--set",
                'ablation.variants=[{name="base"}, {name="swiglu", model={mlp="swiglu"}}]',
            ],
            "default.toml: ablation variants 'base' and 'swiglu' train the same model",
        ),
        (  # ingest said so, after Prefect had logged the error's traceback
            ["run", "default", "--set", 'ingest.sources=["no/such/file.txt"]'],
            "default.toml: ingest.sources: no/such/file.txt: no such file or directory",
        ),
        (  # the train stage said so once every data stage had run
            ["run", "default", "--set", 'train.init_from="no/such/model"'],
            "train.init_from: ",
        ),
    ],
)
def test_what_a_flow_would_refuse_is_one_line_before_the_flow_starts(workspace, args, expected):
    # The ablation flow checked its variants only once Prefect ran it: a traceback in the
    # flow's log, then the error.
    result = run_cli(*args, check=False)
    assert result.returncode == 1
    assert result.stderr.splitlines() == [result.stderr.strip()]  # one line
    assert result.stderr.startswith("error: ") and expected in result.stderr
    assert "Flow run" not in result.stdout + result.stderr


def test_check_says_what_run_would_refuse_and_starts_nothing(workspace, tmp_path):
    """A config for a deployment run could be checked only by running it: on a worker, after
    a server, a flow run and perhaps the data stages."""
    from tests.helpers import prose, write_config

    (tmp_path / "notes.txt").write_text(prose(1))
    model = '[model]\nkind = "gpt"\nn_layer = 1\nn_head = 2\nn_embd = 32\nblock_size = 32\n'
    config = write_config(tmp_path / "c.toml", [{"path": str(tmp_path / "notes.txt")}], model)
    ready = run_cli("check", str(config)).stdout
    assert f"{config}: ready for `lmforge run`" in ready
    assert "inputs: 1 (" in ready and "models: gpt" in ready
    for args, said in (
        (["--set", "model.n_head=5"], "n_embd"),  # the config's own values
        (["--set", 'ingest.sources=["nowhere.txt"]'], "nowhere.txt: no such file or directory"),
        (["--for", "ablation"], "an ablation needs [[ablation.variants]]"),
        (["--for", "train"], "--for train: one of run, retrain, ablation"),
    ):
        refused = run_cli("check", str(config), *args, check=False)
        assert refused.returncode == 1 and said in refused.stderr, refused.stderr
        assert refused.stderr.count("\n") == 1 and refused.stderr.startswith("error: ")
    assert not list((workspace.root / "prefect").iterdir())  # no server was started
    assert not list(workspace.artifacts.iterdir()) and not workspace.registry_path.exists()


def test_a_relative_source_says_where_it_was_read_from_and_the_file_beside_the_config(
    workspace, tmp_path
):
    """A config moved into a project folder with its text beside it, run from elsewhere: "no
    such file or directory", with no word of the folder the path was read from."""
    from tests.helpers import prose, write_config

    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "notes.txt").write_text(prose(1))
    config = write_config(tmp_path / "project.toml", [{"path": "data/notes.txt"}])
    result = run_cli("run", str(config), check=False)  # from the repository's folder
    assert result.returncode == 1 and result.stderr.count("\n") == 1, result.stderr
    assert (f"ingest.sources: data/notes.txt: no such file or directory (read from the current "
            f"folder, {REPO})") in result.stderr  # fmt: skip
    beside = tmp_path.resolve() / "data" / "notes.txt"
    assert result.stderr.strip().endswith(f"beside the config is {beside}: write that path")
    (tmp_path / "data" / "notes.txt").unlink()  # nothing beside it: no such advice
    assert "beside" not in run_cli("run", str(config), check=False).stderr
    pattern = write_config(tmp_path / "glob.toml", [{"path": "data/*.txt"}])
    matched = run_cli("check", str(pattern), check=False).stderr
    assert f"data/*.txt: the pattern matches no files (read from the current folder, {REPO})" in (
        matched
    )


def test_a_cuda_device_on_a_machine_without_one_is_refused_before_the_flow_starts(workspace):
    # The train stage said so once every data stage had run, after Prefect's traceback.
    if __import__("torch").cuda.is_available():
        pytest.skip("this machine has a CUDA GPU")
    result = run_cli("run", "default", "--set", "train.device=cuda", check=False)
    assert result.returncode == 1
    assert result.stderr.strip() == (
        "error: " + str(REPO / "configs" / "default.toml") + ': train.device = "cuda", but this '
        'PyTorch sees no CUDA GPU: set train.device = "auto" or "cpu"'
    )
    assert "Flow run" not in result.stdout + result.stderr


@pytest.mark.parametrize(
    "args, expected",
    [
        (["--vocab-size", "0"], "greater than or equal to 2"),  # was a pydantic traceback
        (["--train-steps", "-5"], "greater than or equal to 0"),  # was read as 0
        (["--config", "names"], "--config is read only with --train-steps"),  # was ignored
        (["--vocab-size", "10"], "--vocab-size: vocab_size (10) is too small"),  # a traceback
    ],
)
def test_tokenizers_compare_refuses_options_it_cannot_use(workspace, args, expected):
    from typer.testing import CliRunner

    from flows.cli import app

    result = CliRunner().invoke(app, ["tokenizers", "compare", *args])
    assert result.exit_code in (1, 2) and isinstance(result.exception, SystemExit)
    assert expected in " ".join(result.output.replace("│", " ").split())


@pytest.mark.parametrize(
    "config, override, expected",
    [
        ("default", "train.block_size=256", "train.block_size (256) does not apply to a gpt"),
        ("names", "models.3.train.block_size=32", "set models.3.block_size (now 16)"),
        (
            "ablation",
            'ablation.variants=[{name="x", train={block_size=8}}]',
            "ablation variant 'x': train.block_size (8) does not apply to a gpt",
        ),
    ],
)
def test_a_train_block_size_a_gpt_would_ignore_is_refused(config, override, expected):
    # The gpt trained on model.block_size and the setting was dropped without a word.
    with pytest.raises(ConfigError, match=re.escape(expected)):
        load_config(config, [override])


def test_a_train_block_size_that_agrees_with_the_gpt_or_serves_a_ladder_is_kept():
    assert load_config("default", ["train.block_size=128"]).train.block_size == 128
    ladder = load_config("names", ["train.block_size=32"]).model_runs()
    assert [run.train.block_size for run in ladder] == [32, 32, 32, 32]  # the gpt: its own 16


def test_a_vocabulary_too_small_for_the_byte_pieces_is_refused_at_load_time():
    # SentencePiece said so only after ingest and cleaning had run.
    with pytest.raises(ConfigError, match=re.escape("vocab_size (10) is too small: byte_fallback")):
        load_config("default", ["tokenizer.vocab_size=10"])
    load_config("default", ["tokenizer.vocab_size=10", "tokenizer.byte_fallback=false"])


@pytest.mark.parametrize(
    "override", ["train.learning_rate=inf", "train.weight_decay=inf", "retrain.margin=nan"]
)
def test_an_infinite_or_nan_setting_is_refused(override):
    # inf passed every lower bound (an infinite learning rate), nan every check that was not a
    # bound, and training or promotion then failed or misjudged long after the config loaded.
    key = override.partition("=")[0]
    with pytest.raises(ConfigError, match=re.escape(f"'{key}': Input should be a finite number")):
        load_config("default", [override])


@pytest.mark.parametrize(
    "override, expected",
    [
        ("train.beta2=1.5", "'train.beta2': Input should be less than 1"),  # torch, at step 0
        ("train.beta1=-0.1", "'train.beta1': Input should be greater than or equal to 0"),
        ("model.rope_base=0", "'model.rope_base': Input should be greater than 0"),
        ("ingest.url_timeout_s=-1", "'ingest.url_timeout_s': Input should be greater than 0"),
        ("model.mlp_ratio=0.001", "mlp_ratio (0.001) × n_embd (128) leaves the MLP no hidden"),
        ("model.n_embd=12", "rope needs an even head size, not 3 (n_embd 12 / n_head 4)"),
    ],
)
def test_a_setting_training_could_not_use_is_refused_at_load_time(override, expected):
    with pytest.raises(ConfigError, match=re.escape(expected)):
        load_config("default", [override])


def test_a_run_with_models_and_no_val_split_is_refused_at_load_time(tmp_path):
    # Training failed on the empty val split only after every data stage had run.
    with pytest.raises(ConfigError, match=r"split\.val is 0, but training evaluates on the val"):
        load_config("default", ["split.val=0"])
    with pytest.raises(ConfigError, match=r"split\.val is 0"):
        load_config("names", ["split.val=0"])
    data_only = tmp_path / "data.toml"
    data_only.write_text('[ingest]\nsources = ["notes/"]\n[split]\nval = 0.0\n')
    assert load_config(str(data_only)).split.val == 0  # no model: nothing evaluates on val


def test_a_folder_named_like_a_preset_does_not_hide_the_preset(tmp_path, monkeypatch):
    (tmp_path / "names").mkdir()  # a data folder, say
    monkeypatch.chdir(tmp_path)
    assert load_config("names").name == "names"
    (tmp_path / "notes").mkdir()
    with pytest.raises(ConfigError, match=r"notes: is a folder, not a config file"):
        load_config("notes")


def test_an_eval_window_longer_than_a_gpt_s_context_is_refused_at_load_time():
    # The evaluate stage said so once the model had trained.
    expected = "eval.window (17) is longer than the context of model 'gpt' (block_size 16)"
    with pytest.raises(ConfigError, match=re.escape(expected)):
        load_config("names", ["eval.window=17"])
    variant = 'ablation.variants=[{name="short", model={block_size=32}}]'
    with pytest.raises(ConfigError, match=r"context of ablation variant 'short' \(block_size 32\)"):
        load_config("ablation", ["eval.window=64", variant])
    assert load_config("names", ["eval.window=16"]).eval.window == 16


def test_a_config_in_the_home_of_an_unknown_user_is_a_config_error():
    from lm.config import resolve_preset

    with pytest.raises(ConfigError, match=r"~no-such-user-here/x\.toml: no such user's home"):
        resolve_preset("~no-such-user-here/x.toml")


def test_the_command_that_reproduces_a_run_quotes_what_the_shell_would_split():
    import shlex

    from flows.pipeline import reproduce_command

    line = reproduce_command("/tmp/my cfg.toml", ["name=x y", "train.max_steps=5"])
    assert shlex.split(line) == ["lmforge", "run", "/tmp/my cfg.toml", "--set", "name=x y",
                                 "--set", "train.max_steps=5"]  # fmt: skip


def test_a_run_that_read_relative_paths_is_reproduced_from_its_working_folder(tmp_path):
    """`lmforge run c.toml` with `sources = ["data/"]` read the folder under the working
    directory: the reproduce line run from anywhere else read another folder, or none."""
    import shlex

    from flows.pipeline import relative_paths_of, reproduce_command
    from tests.helpers import write_config

    sources = [{"path": "data/"}, {"path": "gensim:lee_background.cor"},
               {"path": "names:dist.male.first"}, {"path": "https://example.org/a.txt"},
               {"path": str(tmp_path / "abs.txt")}, {"path": "~/home.txt"}]  # fmt: skip
    config = write_config(tmp_path / "c.toml", sources)
    assert relative_paths_of(load_config(str(config))) == ["data/"]
    assert relative_paths_of(load_config(str(config), ["ingest.sources=['/x']"])) == []
    # A relative init_from is inside the workspace, wherever the command runs.
    continued = load_config(str(config), ["ingest.sources=['/x']", 'model={kind="bigram"}',
                                          "train.init_from=runs/a/ck"])  # fmt: skip
    assert relative_paths_of(continued) == []

    line = reproduce_command(str(config), ["name=x"], "run", cwd="/work/my data")
    assert shlex.split(line) == ["cd", "/work/my data", "&&", "lmforge", "run", str(config),
                                 "--set", "name=x"]  # fmt: skip


def test_a_long_error_is_one_line_on_a_pipe(workspace, tmp_path):
    # Piped stderr is 200 columns wide, and a longer message was cut into two lines.
    missing = tmp_path / ("a-long-folder-name-" * 12) / "config.toml"
    result = run_cli("size", str(missing), check=False)
    assert result.returncode == 1
    [line] = result.stderr.splitlines()
    assert line.startswith(f"error: {missing}: no such config file (presets: ")


def test_a_relative_config_that_is_missing_names_the_folder_it_was_read_from(tmp_path, monkeypatch):
    # A deployment's `config=tiny.toml` is read in the worker's folder; the error said only
    # "tiny.toml: no such config file", not where it looked.
    monkeypatch.chdir(tmp_path)
    said = re.escape(f"tiny.toml: no such config file in {tmp_path} (")
    with pytest.raises(ConfigError, match=said):
        resolve_preset("tiny.toml")
    said = re.escape(f"{tmp_path / 'x.toml'}: no such config file (")  # absolute: no folder
    with pytest.raises(ConfigError, match=said):
        resolve_preset(str(tmp_path / "x.toml"))


def test_a_relative_config_missing_from_a_deleted_current_folder_is_one_line(tmp_path, monkeypatch):
    # A shell in a folder since deleted (`rm -rf` from another shell): asking where it looked
    # raised FileNotFoundError, a traceback in place of the error.
    gone = tmp_path / "gone"
    gone.mkdir()
    monkeypatch.chdir(gone)
    gone.rmdir()
    with pytest.raises(ConfigError, match=re.escape("tiny.toml: no such config file in the ")):
        resolve_preset("tiny.toml")


def test_a_table_or_array_written_as_something_else_is_named_in_toml_s_words(tmp_path):
    # pydantic says "a valid dictionary or object to extract fields from" for a table.
    config = tmp_path / "array.toml"
    config.write_text('[ingest]\nsources = ["x"]\n[[model]]\nkind = "gpt"\n')
    with pytest.raises(ConfigError, match=r"'model': should be a table, not an array$"):
        load_config(str(config))
    with pytest.raises(ConfigError, match=r"'ingest\.sources': should be an array, not a string"):
        load_config("default", ['ingest.sources="notes/"'])


@pytest.mark.parametrize(
    ("override", "said"),
    [
        # Accepted, then a traceback from torch's generator once the data stages had run.
        ("train.seed=18446744073709551615", "'train.seed': Input should be less than or equal"),
        ("tokenizer.seed=4294967296", "'tokenizer.seed': Input should be less than or equal"),
        ("word2vec.seed=-3", "'word2vec.seed': Input should be greater than or equal to 0"),
        ("clean.near_dup.seed=-1", "'clean.near_dup.seed': Input should be greater than"),
        ("eval.seed=1180591620717411303424", "'eval.seed': Input should be less than or equal"),
        # torch's generator reads 32 bits: these trained or sampled what 7 and 2**32 - 1 do,
        # under cache keys of their own.
        ("seed=4294967303", "'seed': Input should be less than or equal to 4294967295"),
        ("train.seed=4294967296", "'train.seed': Input should be less than or equal to 4294"),
        ("eval.sampling.seed=-1", "'eval.sampling.seed': Input should be greater than or equal"),
        ("eval.seed=-1", "'eval.seed': Input should be greater than or equal to 0"),
    ],
)
def test_a_seed_the_generators_cannot_take_is_refused_at_load_time(override, said):
    with pytest.raises(ConfigError, match=re.escape(said)):
        load_config("default", [override])
    key = override.partition("=")[0]
    assert load_config("default", [f"{key}=0"]) is not None


def test_a_ladder_model_s_train_settings_are_named_by_their_keys_and_set():
    # They said `models 'mlp' train: unknown key 'max_step'`: no dotted key, no --set.
    with pytest.raises(ConfigError) as caught:
        load_config("names", ["models.2.train.max_step=5"])
    assert str(caught.value).endswith(
        "names.toml: unknown key 'models.2.train.max_step' (did you mean "
        "'models.2.train.max_steps'?), from --set models.2.train.max_step=5"
    )
    with pytest.raises(ConfigError, match=re.escape("'models.2.train.max_steps': Input should")):
        load_config("names", ["models.2.train.max_steps=0"])
    with pytest.raises(ConfigError, match=r"'models\.1\.train': global_batch \(128\) must be"):
        load_config("names", ["models.1.train.micro_batch=256"])


def test_every_toml_example_in_readme_is_a_config_lmforge_accepts(tmp_path):
    """A user pastes them: the main example once set a char-only key under a bpe tokenizer, and
    was refused. A snippet without sources gets one."""
    import re

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(r"^```toml\n(.*?)^```", readme, re.MULTILINE | re.DOTALL)
    assert len(blocks) >= 3
    for number, block in enumerate(blocks):
        if "[ingest]" not in block:
            block = '[ingest]\nsources = ["gensim:lee_background.cor"]\n' + block
        path = tmp_path / f"example-{number}.toml"
        path.write_text(block, encoding="utf-8")
        try:
            load_config(str(path))
        except ConfigError as error:
            raise AssertionError(f"README's toml example {number}: {error}\n{block}") from None


@pytest.mark.parametrize(
    ("override", "said"),
    [
        (
            "tokenizer.character_coverage=0.5",
            "'tokenizer.character_coverage': Input should be greater than or equal to 0.98",
        ),
        (
            "tokenizer.max_sentence_length=5",
            "'tokenizer.max_sentence_length': Input should be greater than or equal to 10",
        ),
        ("tokenizer.user_defined_symbols=['<|endoftext|>']", "[0] '<|endoftext|>' is a piece"),
        ("tokenizer.user_defined_symbols=['<unk>']", "[0] '<unk>' is a piece every tokenizer"),
        ("tokenizer.user_defined_symbols=['<a>', '<a>']", "[1] '<a>' is listed twice"),
        ("tokenizer.user_defined_symbols=['']", "[0] is empty"),
        ("tokenizer.user_defined_symbols=['<0x41>']", "[0] '<0x41>' is a piece every"),
        ("tokenizer.user_defined_symbols=['New York']", "holds whitespace, which a symbol never"),
        ("tokenizer.user_defined_symbols=['a  b']", "('a▁b' matches the words"),
        ("tokenizer.input_sentence_size=100", "100 is too few: 0 (every line) or more than 100"),
        ("tokenizer.max_sentence_length=2147483648", "less than or equal to 1073741824"),
    ],
)
def test_tokenizer_settings_sentencepiece_refuses_are_refused_at_load(override, said):
    """SentencePiece's trainer refused these once ingest and clean had run, in its own words
    (`trainer_interface.cc(94) [trainer_spec.character_coverage() >= 0.98 ...]`), naming no key."""
    with pytest.raises(ConfigError) as caught:
        load_config("default", [override])
    assert said in str(caught.value)


@pytest.mark.parametrize(
    ("override", "said"),
    [
        ("clean.quality.max_words=-1", "'clean.quality.max_words': Input should be greater"),
        ("clean.quality.min_alpha_word_fraction=2", "min_alpha_word_fraction': Input should be"),
        ("clean.quality.min_words=200000", "min_words (200000) is above max_words (100000)"),
        ("clean.quality.max_top_ngram_char_fraction=[0.2,1.5,0.1]", "char_fraction.1': Input"),
    ],
)
def test_quality_thresholds_no_document_could_pass_are_refused_at_load(override, said):
    """They rejected every document, and the error blamed the data ("add longer texts")."""
    with pytest.raises(ConfigError) as caught:
        load_config("default", [override])
    assert said in str(caught.value)


def test_the_run_seed_seeds_a_train_config_built_in_python_unless_it_sets_its_own():
    # A seed sweep written with typed objects trained the same model each time (seed 1337).
    from lm.config import PipelineConfig
    from lm.train_config import TrainConfig

    def built(seed: int, train) -> int:
        return PipelineConfig(ingest={"sources": ["x"]}, seed=seed, train=train).train.seed

    assert [built(seed, TrainConfig(max_steps=100)) for seed in (1, 2)] == [1, 2]
    assert [built(seed, {"max_steps": 100}) for seed in (1, 2)] == [1, 2]
    assert built(2, TrainConfig(seed=7)) == 7


def test_a_model_larger_than_the_machine_is_refused_before_the_flow_starts(
    workspace, monkeypatch, capsys
):
    # The train stage met it once every data stage had run: torch's allocator traceback
    # (500 lines) under a memory limit, or the kernel's OOM kill, with no message, without one.
    import typer

    from flows import cli

    settings, path = load_config("default"), resolve_preset("default")
    cli._check_memory(settings, settings.model_runs(), path)  # it fits this machine
    monkeypatch.setattr(memory_fit, "machine_memory", lambda: (2**20, "of RAM"))
    with pytest.raises(typer.Exit) as refused:
        cli._check_memory(settings, settings.model_runs(), path)
    assert refused.value.exit_code == 1
    said = capsys.readouterr().err
    assert said.splitlines() == [said.strip()]  # one line
    assert said.startswith(f"error: {path}: the model needs ")
    assert "weights, gradients and AdamW state alone" in said and "1.0 MiB of RAM" in said


def test_a_micro_batch_whose_activations_cannot_fit_is_refused_and_one_that_may_not_is_warned(
    workspace, monkeypatch, capsys
):
    # `check` called a config needing 1.2 TiB of activations "ready" (h145): the run met the
    # allocator's 800-line traceback, or the OOM killer, after every data stage.
    import torch
    import typer

    from flows import cli
    from lm.sizing import size_model

    overrides = ["train.micro_batch=64", "train.global_batch=64", "train.device=cpu"]
    settings, path = load_config("default", overrides), resolve_preset("default")
    [run] = settings.model_runs()
    vocab = settings.tokenizer.vocab_size
    size = size_model(run.model, run.train, vocab, device=torch.device("cpu"))
    state, activations = size.state_bytes_per_process(), size.activations_bytes
    assert activations > 10 * state  # the case: the model is small, its micro-batch is not
    monkeypatch.setattr(
        memory_fit, "machine_memory", lambda: (state + activations * 3 // 4, "of RAM")
    )
    cli._check_memory(settings, [run], path)  # may fit (compiled, say): a warning
    warned = capsys.readouterr().err
    assert warned.startswith(f"warning: {path}: the model may need about ")
    assert "it may be killed for memory" in warned and warned.count("\n") == 1
    monkeypatch.setattr(
        memory_fit, "machine_memory", lambda: (state + activations * 2 // 5, "of RAM")
    )
    with pytest.raises(typer.Exit):
        cli._check_memory(settings, [run], path)
    said = capsys.readouterr().err
    assert said.startswith(f"error: {path}: the model needs about ") and said.count("\n") == 1
    assert "of a micro-batch of 64 × 128 tokens" in said and "lower train.micro_batch" in said


def test_a_count_bigram_of_a_large_vocabulary_is_not_refused(workspace, monkeypatch):
    # Its table is sparse: the pairs the text holds, not V² (40 GB bound at GPT-2's 50,257),
    # and it is counted in one process, whatever train.nproc_per_node says.
    from flows import cli

    overrides = ["model={kind = \"bigram-count\"}", "tokenizer.vocab_size=50257",
                 "train.device=cpu"]  # fmt: skip
    settings, path = load_config("default", overrides), resolve_preset("default")
    monkeypatch.setattr(memory_fit, "machine_memory", lambda: (16 * 2**30, "of RAM"))
    cli._check_memory(settings, settings.model_runs(), path)


def test_the_path_beside_the_config_is_that_of_the_missing_source(workspace, tmp_path, capsys):
    # "missing.txt: no such file ...; beside the config is .../long.txt: write that path"
    # gave one source's path as the other's.
    import typer

    from flows import cli
    from tests.helpers import prose, write_config

    (tmp_path / "long.txt").write_text(prose(1))
    config = write_config(tmp_path / "c.toml", [{"path": "missing.txt"}, {"path": "long.txt"}])
    with pytest.raises(typer.Exit):
        cli._check_sources(load_config(str(config)), config)
    said = capsys.readouterr().err
    assert "missing.txt: no such file or directory" in said, said
    assert "beside the config is" not in said, said


def test_an_address_space_limit_below_the_ram_is_the_memory_a_training_has(monkeypatch):
    # Under `ulimit -v` a model that fits the RAM but not the limit passed the check and died in
    # the train stage, after every data stage, as a 900-line "can't allocate memory" traceback.
    import resource

    monkeypatch.setattr(resource, "getrlimit", lambda which: (2**30, resource.RLIM_INFINITY))
    assert memory_fit.machine_memory() == (2**30, "the address-space limit (ulimit -v) allows")
    monkeypatch.setattr(resource, "getrlimit", lambda which: (2**62, resource.RLIM_INFINITY))
    assert memory_fit.machine_memory()[1] == "of RAM"


def test_an_address_space_limit_is_each_process_s_not_the_node_s(monkeypatch):
    # `ulimit -v` caps each process's own address space: 2 processes needing 9 GiB each were
    # refused under a 12 GiB limit as "18.0 GiB ... more than the 11.4 GiB" (h147).
    import resource

    import torch

    from lm.sizing import size_model

    overrides = ["train.device=cpu", "train.nproc_per_node=2", "train.micro_batch=1",
                 "train.global_batch=2"]  # fmt: skip
    settings, path = load_config("default", overrides), resolve_preset("default")
    [run] = settings.model_runs()
    size = size_model(run.model, run.train, settings.tokenizer.vocab_size,
                      device=torch.device("cpu"))  # fmt: skip
    each = size.state_bytes_per_process() + (size.activations_bytes or 0)
    limit = each * 3 // 2  # one process fits it, both together do not
    monkeypatch.setattr(resource, "getrlimit", lambda which: (limit, resource.RLIM_INFINITY))
    monkeypatch.setattr(memory_fit, "ram_bytes", lambda: 64 * each, raising=False)
    found = memory_fit.memory_fit(settings, [run], path)
    assert found.refusal is None and not found.warnings
    monkeypatch.setattr(memory_fit, "ram_bytes", lambda: each)  # the RAM holds both, or not
    assert "of RAM" in memory_fit.memory_fit(settings, [run], path).refusal


def test_an_ablation_s_seeds_are_warned_of_once_per_variant(monkeypatch):
    # The 21 arms of configs/ablation.toml (7 variants × 3 seeds) gave 21 warnings, three
    # alike for each variant (h147).
    import torch

    from lm.sizing import size_model

    settings, path = load_config("ablation"), resolve_preset("ablation")
    arms = [arm for *_, arm in settings.ablation_runs()]
    variants = {arm.label.split("/")[0] for arm in arms}
    assert len(arms) > len(variants) > 1
    size = size_model(arms[0].model, arms[0].train, settings.tokenizer.vocab_size,
                      device=torch.device("cpu"))  # fmt: skip
    state, activations = size.state_bytes_per_process(), size.activations_bytes
    monkeypatch.setattr(memory_fit, "machine_memory",
                        lambda: (int(state + 0.8 * activations), "of RAM"))  # fmt: skip
    monkeypatch.setattr(memory_fit, "trains_on_the_cpu", lambda requested: True)
    found = memory_fit.memory_fit(settings, arms, path)
    assert found.refusal is None
    assert sorted(w.split("'")[1].split("/")[0] for w in found.warnings) == sorted(variants)


def test_the_ram_caps_what_the_address_space_limits_of_several_processes_allow(monkeypatch):
    """Each process has its own `ulimit -v`, but all of a node's share its RAM: 4 processes
    under an 8 GiB limit have 32 GiB between them only where the machine has 32 GiB."""
    gib = 2**30
    monkeypatch.setattr(memory_fit, "ram_bytes", lambda: 20 * gib)
    limit = (8 * gib, memory_fit.ADDRESS_SPACE)
    assert memory_fit.for_processes(limit, 4) == (20 * gib, "of RAM")
    assert memory_fit.for_processes(limit, 2) == (
        16 * gib, "the address-space limits (ulimit -v) of 2 allow"
    )  # fmt: skip
    assert memory_fit.for_processes((8 * gib, "of RAM"), 4) == (8 * gib, "of RAM")


def test_a_model_continued_from_init_from_or_a_char_tokenizer_s_is_sized_as_it_will_be(
    monkeypatch,
):
    """A run from `train.init_from` keeps its checkpoint's vocabulary, unknown here: not sized
    (it was refused for the config's vocabulary). A char tokenizer's vocabulary is its text's,
    counted at 2 ids: a model refused then cannot fit whatever the text."""
    import dataclasses

    import torch

    from lm.sizing import size_model

    settings, path = load_config("default"), resolve_preset("default")
    [run] = settings.model_runs()
    monkeypatch.setattr(memory_fit, "machine_memory", lambda: (2**20, "of RAM"))
    assert memory_fit.memory_fit(settings, [run], path).refusal  # 1 MiB: nothing fits
    continued = dataclasses.replace(run, train=run.train.model_copy(update={"init_from": "x"}))
    assert memory_fit.memory_fit(settings, [continued], path).refusal is None
    char = load_config("default", ["tokenizer.kind=char"])
    [char_run] = char.model_runs()
    said = memory_fit.memory_fit(char, [char_run], path).refusal
    two_ids = size_model(char_run.model, char_run.train, 2, device=torch.device("cpu"))
    assert f"({two_ids.parameters:,} parameters)" in said


def test_the_smallest_document_limit_the_message_names_is_accepted():
    # "must be at least 0.001 (1 kB)": 0.001 itself is that least.
    assert load_config("default", ["ingest.max_document_mb=0.001"]).ingest.max_document_mb == 0.001
    with pytest.raises(ConfigError, match=re.escape("must be at least 0.001 (1 kB)")):
        load_config("default", ["ingest.max_document_mb=0.0009"])


def test_a_max_words_of_zero_is_refused_even_with_min_words_zero():
    # min_words = 0 passes the "min_words above max_words" check: the bound says it.
    with pytest.raises(ConfigError, match=re.escape("'clean.quality.max_words': Input should be")):
        load_config("default", ["clean.quality.min_words=0", "clean.quality.max_words=0"])


@pytest.mark.parametrize(
    ("override", "said"),
    [
        ("clean.quality.max_top_ngram_char_fraction=[0.2,0.18,0.16,0.1]", "needs 3 values"),
        ("clean.quality.max_top_ngram_char_fraction=[0.2,0.18]", "needs 3 values"),
        (
            "clean.quality.max_duplicate_ngram_char_fraction=[0.1,0.1,0.1,0.1,0.1,0.1,0.1]",
            "needs 6 values",
        ),
    ],
)
def test_an_ngram_list_of_the_wrong_length_is_refused_too_long_or_too_short(override, said):
    with pytest.raises(ConfigError, match=re.escape(said)):
        load_config("default", [override])


def test_equal_lower_and_upper_quality_bounds_are_a_band_documents_can_pass():
    # "no document can pass" is said of a lower bound above the upper; equal bounds keep those
    # documents that meet both.
    loaded = load_config("default", ["clean.quality.min_words=80", "clean.quality.max_words=80"])
    assert loaded.clean.quality.max_words == 80
    loaded = load_config(
        "default",
        ["clean.quality.min_mean_word_length=4.5", "clean.quality.max_mean_word_length=4.5"],
    )
    assert loaded.clean.quality.min_mean_word_length == 4.5


def test_a_near_duplicate_threshold_of_zero_is_refused():
    # A similarity of 0 or more is every pair: every document but the first would be a copy.
    with pytest.raises(ConfigError, match=re.escape("'clean.near_dup.threshold': Input should be")):
        load_config("default", ["clean.near_dup.threshold=0"])


def test_val_and_test_that_take_the_whole_corpus_are_refused():
    with pytest.raises(ConfigError, match=re.escape("split.val + split.test must leave some data")):
        load_config("default", ["split.val=0.5", "split.test=0.5"])


def test_a_split_by_piece_applies_to_hash_and_random_and_is_refused_for_ordered():
    from lm.config import SplitConfig

    with pytest.raises(ValueError, match=re.escape("split.unit applies to hash and random")):
        SplitConfig(method="ordered", unit="piece")
    assert SplitConfig(method="random", unit="piece").unit == "piece"
    assert SplitConfig(method="hash", unit="piece").unit == "piece"


def test_a_symbol_holding_a_tab_is_refused_as_one_holding_a_space_is():
    with pytest.raises(ConfigError, match="holds whitespace, which a symbol never matches"):
        load_config("default", ['tokenizer.user_defined_symbols=["a\\tb"]'])


def test_the_byte_fallback_floor_is_256_bytes_and_4_special_pieces_exactly():
    with pytest.raises(ConfigError, match=re.escape("vocab_size (260) is too small")):
        load_config("default", ["tokenizer.vocab_size=260"])
    assert load_config("default", ["tokenizer.vocab_size=261"]).tokenizer.vocab_size == 261
    with pytest.raises(ConfigError, match=re.escape("byte_fallback takes 261 pieces")):
        load_config(
            "default", ["tokenizer.vocab_size=261", "tokenizer.user_defined_symbols=['<a>']"]
        )


@pytest.mark.parametrize("runner", ["threads", "processes"])
def test_a_dask_address_without_the_dask_runner_is_refused(runner):
    # The address would be ignored and the work run on this machine's threads or processes.
    with pytest.raises(ConfigError, match=f"dask_address is set but task_runner is '{runner}'"):
        load_config(
            "default", [f"runtime.task_runner={runner}", "runtime.dask_address=tcp://h:8786"]
        )


def test_two_ablation_variants_of_one_name_are_refused():
    # Their arms share labels (`wide/seed-1`) and a row of ablation.md.
    variants = (
        'ablation.variants=[{name="wide", model={n_embd=64}}, {name="wide", model={n_embd=96}}]'
    )
    with pytest.raises(ConfigError, match=re.escape("ablation variant names must differ")):
        load_config("default", [variants])


@pytest.mark.parametrize("override", ["retrain.steps=0", "retrain.min_new_documents=0"])
def test_a_retrain_of_no_steps_or_on_no_documents_is_refused(override):
    # No steps promoted the champion's own weights as a candidate; no documents retrained on
    # nothing new.
    with pytest.raises(
        ConfigError, match=re.escape(f"'{override.partition('=')[0]}': Input should")
    ):
        load_config("default", [override])


def test_a_w2v_model_with_word2vec_switched_off_is_refused_even_on_pieces():
    from lm.config import parse_config

    data = {
        "ingest": {"sources": ["x.txt"]},
        "word2vec": {"enabled": False, "input": "pieces", "vector_size": 50},
        "model": {"kind": "w2v", "vector_size": 50},
    }
    # No vectors would be trained for it to read.
    with pytest.raises(ConfigError, match=re.escape("set word2vec.enabled = true")):
        parse_config(data, origin="test.toml")


def test_a_model_and_a_ladder_in_one_config_are_refused():
    from lm.config import parse_config

    data = {"ingest": {"sources": ["x.txt"]}, "model": {"kind": "bigram"},
            "models": [{"kind": "mlp"}]}  # fmt: skip
    with pytest.raises(ConfigError, match=re.escape("give either [model] or [[models]], not both")):
        parse_config(data, origin="test.toml")


def test_two_ladder_models_of_one_label_are_refused():
    # Their curves, stages (`train/mlp`) and registry rows would be one model's.
    from lm.config import parse_config

    data = {"ingest": {"sources": ["x.txt"]}, "models": [{"kind": "mlp"}, {"kind": "mlp"}]}
    with pytest.raises(ConfigError, match=re.escape("model labels must differ: ['mlp', 'mlp']")):
        parse_config(data, origin="test.toml")
    data["models"][1]["name"] = "mlp-wide"
    labels = [run.label for run in parse_config(data, origin="test.toml").model_runs()]
    assert labels == ["mlp", "mlp-wide"]


def test_each_ablation_arm_trains_with_its_own_seed_not_the_run_s():
    # Three "seeds" of one seed: the same numbers three times, and a spread of 0.
    variants = 'ablation.variants=[{name="base"}, {name="wide", model={n_embd=192}}]'
    arms = load_config("default", [variants, "ablation.seeds=[4, 5]", "seed=9"]).ablation_runs()
    assert [(name, seed, run.train.seed, run.label) for name, seed, run in arms] == [
        ("base", 4, 4, "base/seed-4"), ("base", 5, 5, "base/seed-5"),
        ("wide", 4, 4, "wide/seed-4"), ("wide", 5, 5, "wide/seed-5"),
    ]  # fmt: skip


def test_a_preset_name_that_is_no_preset_lists_the_presets_without_a_folder():
    # A bare name is a preset's: "no such config file in /home/me" sent the user looking there.
    with pytest.raises(ConfigError) as caught:
        resolve_preset("no-such-preset")
    assert str(caught.value).startswith("no-such-preset: no such config file (presets: ")


def test_a_problem_inside_a_table_a_set_replaced_names_that_set():
    with pytest.raises(ConfigError) as caught:
        load_config("default", ['model={kind="gpt", n_layer=0}'])
    assert "'model.n_layer': Input should be" in str(caught.value)
    assert 'from --set model={kind="gpt", n_layer=0}' in str(caught.value)


def test_an_override_whose_value_holds_a_newline_and_another_key_is_refused():
    with pytest.raises(ConfigError, match="the value must be one TOML value"):
        load_config("default", ["train.max_steps=5\nseed = 3"])


def test_an_override_of_the_entry_one_past_a_ladder_s_end_names_the_entries_there_are():
    ladder = len(load_config("names").models)
    with pytest.raises(ConfigError, match=re.escape(f"(it has {ladder}, numbered from 0)")):
        load_config("names", [f"models.{ladder}.dropout=0.1"])


def test_setting_the_preset_a_file_already_names_keeps_the_file_s_switches(tmp_path):
    # Only a change of preset brings its switches over the file's.
    config = tmp_path / "c.toml"
    config.write_text('[ingest]\nsources = ["x.txt"]\n[model]\nkind = "gpt"\npreset = "modern"\n'
                      'n_embd = 64\nn_head = 4\nmlp = "gelu"\n')  # fmt: skip
    assert load_config(str(config), ["model.preset=modern"]).model.mlp == "gelu"
