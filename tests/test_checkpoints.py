"""Choosing a checkpoint without torch: folders made by hand, so each rule is checked in
milliseconds (the training tests check the same rules on real checkpoints)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lm import checkpoints
from lm.checkpoints import DONE_MARKER, INFO_FILE, WEIGHTS_FILE, latest_checkpoint
from lm.train_config import TrainingError


def _checkpoint(folder: Path, step: int, done: bool = True, weights: bytes = b"w" * 8) -> Path:
    path = folder / f"step-{step:08d}"
    path.mkdir(parents=True)
    (path / WEIGHTS_FILE).write_bytes(weights)
    info = {"step": step, "files": {WEIGHTS_FILE: len(weights)},
            "sha256": {WEIGHTS_FILE: checkpoints.file_sha256(path / WEIGHTS_FILE)}}  # fmt: skip
    (path / INFO_FILE).write_text(json.dumps(info))
    if done:
        (path / DONE_MARKER).write_text("")
    return path


def test_the_newest_complete_and_whole_checkpoint_is_chosen_by_step_not_by_name(tmp_path):
    for step in (5, 300, 99_999_999):
        _checkpoint(tmp_path, step)
    _checkpoint(tmp_path, 100_000_000)  # a name one digit longer than the others
    assert latest_checkpoint(tmp_path).name == "step-100000000"
    _checkpoint(tmp_path, 100_000_001, done=False)  # being written: no DONE yet
    assert latest_checkpoint(tmp_path).name == "step-100000000"
    assert [p.name for p in checkpoints.usable_checkpoints(tmp_path)] == [
        "step-100000000",
        "step-99999999",
        "step-00000300",
        "step-00000005",
    ]


def test_a_checkpoint_whose_weights_grew_or_went_is_skipped_for_the_one_before(tmp_path):
    _checkpoint(tmp_path, 5)
    grown = _checkpoint(tmp_path, 10)
    (grown / WEIGHTS_FILE).write_bytes(b"w" * 9)  # appended to: not the file written
    assert latest_checkpoint(tmp_path).name == "step-00000005"
    (grown / INFO_FILE).write_text(json.dumps({"step": 10}))  # no sizes recorded
    (grown / WEIGHTS_FILE).unlink()
    assert latest_checkpoint(tmp_path).name == "step-00000005"


def test_a_weights_file_of_the_right_size_but_other_bytes_is_found_out(tmp_path):
    checkpoint = _checkpoint(tmp_path, 5)
    assert checkpoints.digest_mismatch(checkpoint, [WEIGHTS_FILE]) is None
    (checkpoint / WEIGHTS_FILE).write_bytes(b"x" * 8)
    assert "model.pt is not the file written" in checkpoints.digest_mismatch(
        checkpoint, [WEIGHTS_FILE]
    )


def test_replacing_a_folder_leaves_only_the_new_one(tmp_path):
    final = _checkpoint(tmp_path, 5).rename(tmp_path / "best")
    staging = _checkpoint(tmp_path / "new", 10)
    checkpoints.replace_folder(staging, final)
    assert (final / INFO_FILE).read_text().startswith('{"step": 10')
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best", "new"]


def test_a_folder_moved_aside_is_deleted_once_its_replacement_is_in_place(tmp_path):
    _checkpoint(tmp_path, 5).rename(tmp_path / "best")
    _checkpoint(tmp_path, 3).rename(tmp_path / "best.replaced-4242-abcdef")
    checkpoints.recover_staging(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best"]
    assert (tmp_path / "best" / INFO_FILE).read_text().startswith('{"step": 5')


def test_a_checkpoint_that_recorded_only_its_weights_digest_is_still_checked(tmp_path):
    """Checkpoints written before every file's digest was recorded keep `weights_sha256`
    alone: a flipped bit in their weights is found out all the same."""
    checkpoint = _checkpoint(tmp_path, 5)
    info = json.loads((checkpoint / INFO_FILE).read_text())
    info["weights_sha256"] = info.pop("sha256")[WEIGHTS_FILE]
    (checkpoint / INFO_FILE).write_text(json.dumps(info))
    assert checkpoints.digest_mismatch(checkpoint, [WEIGHTS_FILE]) is None
    (checkpoint / WEIGHTS_FILE).write_bytes(b"x" * 8)
    assert "model.pt is not the file written" in checkpoints.digest_mismatch(
        checkpoint, [WEIGHTS_FILE]
    )


def test_init_from_a_checkpoint_folder_without_its_done_marker_is_refused(tmp_path):
    """A checkpoint folder named outright is taken only once complete: weights without `DONE`
    are a write cut short, not weights to start from."""
    half = _checkpoint(tmp_path, 5, done=False)
    with pytest.raises(TrainingError, match="is not a checkpoint"):
        checkpoints.resolve_init_from(half)
    assert checkpoints.resolve_init_from(_checkpoint(tmp_path, 6)) == tmp_path / "step-00000006"


def test_a_tokenizer_digest_is_another_only_when_both_are_known_and_differ():
    info = {"tokenizer_digest": "abc"}
    assert checkpoints.other_tokenizer(info, "def") == "abc"
    assert checkpoints.other_tokenizer(info, "abc") is None
    assert checkpoints.other_tokenizer(info, None) is None  # a caller without a tokenizer
    assert checkpoints.other_tokenizer({}, "def") is None  # a checkpoint from before digests


def test_the_weights_digest_a_checkpoint_recorded_is_used_without_hashing_the_weights(tmp_path):
    """The train stage's key names the init_from weights by digest: the one recorded at
    saving, not the weights hashed again (seconds for a GB, at every lookup)."""
    checkpoint = _checkpoint(tmp_path, 5)
    assert checkpoints.weights_digest(checkpoint) == checkpoints.file_sha256(
        checkpoint / WEIGHTS_FILE
    )  # none recorded under that key: computed
    info = json.loads((checkpoint / INFO_FILE).read_text()) | {"weights_sha256": "f" * 64}
    (checkpoint / INFO_FILE).write_text(json.dumps(info))
    assert checkpoints.weights_digest(checkpoint) == "f" * 64
