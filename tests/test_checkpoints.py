"""Choosing a checkpoint without torch: folders made by hand, so each rule is checked in
milliseconds (the training tests check the same rules on real checkpoints)."""

from __future__ import annotations

import json
from pathlib import Path

from lm import checkpoints
from lm.checkpoints import DONE_MARKER, INFO_FILE, WEIGHTS_FILE, latest_checkpoint


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
