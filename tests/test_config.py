"""Bad configuration is one clear error naming the file (or the `--set` override) and the
problem, before anything runs."""

from __future__ import annotations

import pytest

from lm.config import ConfigError, load_config


def test_a_config_that_is_not_utf8_names_the_file_the_byte_and_the_line(tmp_path):
    config = tmp_path / "latin1.toml"
    config.write_bytes(b'name = "x"\n[ingest]\nsources = ["caf\xe9.txt"]\n')
    with pytest.raises(ConfigError, match=r"latin1\.toml: not UTF-8 \(byte 0xe9 on line 3\)"):
        load_config(str(config))


def test_a_folder_given_as_the_config_is_said_to_be_a_folder(tmp_path):
    folder = tmp_path / "configs.toml"
    folder.mkdir()
    with pytest.raises(ConfigError, match=r"configs\.toml: is a folder, not a config file"):
        load_config(str(folder))


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
