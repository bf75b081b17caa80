import logging
import os

import pytest

from scimae.core import DataError
from scimae.core.preflight import preflight

CHECKED = []


def _check(path):
    """A file passes unless it says 'bad'."""
    CHECKED.append(path.name)
    if "bad" in path.read_text():
        raise DataError(path, "the word bad", "good files")


def _files(tmp_path, *texts):
    paths = []
    for i, text in enumerate(texts):
        paths.append(tmp_path / f"f{i}.txt")
        paths[-1].write_text(text)
    return paths


def test_every_bad_file_is_named_at_once_or_left_out(tmp_path, caplog):
    files = _files(tmp_path, "ok", "bad", "ok", "bad")
    cache = tmp_path / "cache.json"
    with pytest.raises(DataError, match=r"2 of the 4 records cannot be used \(data.on_error=skip trains on the "
                                        r"rest\):\n  .*f1.txt: found the word bad; expected good files\n  .*f3.txt"):
        preflight(files, _check, "records", cache=cache)
    with caplog.at_level(logging.WARNING):
        kept = preflight(files, _check, "records", "skip", cache=cache)
    assert kept == [files[0], files[2]] and "2 of the 4 records left out (data.on_error=skip)" in caplog.text
    with pytest.raises(DataError, match=r"none of the 2 records can be used:\n  .*f1.txt: found the word bad"):
        preflight([files[1], files[3]], _check, "records", "skip", cache=cache)
    with pytest.raises(ValueError, match="data.on_error must be one of stop, skip"):
        preflight(files, _check, "records", "ignore", cache=cache)


def test_the_run_folder_lists_the_files_left_out(tmp_path, monkeypatch):
    from scimae.core import preflight as module
    from scimae.core.engine import TrainConfig, Trainer
    from toy import toy_mae

    monkeypatch.setattr(module, "SKIPPED", [])
    files = _files(tmp_path, "ok", "bad")
    preflight(files, _check, "records", "skip", cache=tmp_path / "cache.json")
    trainer = Trainer(toy_mae(), TrainConfig(out_dir=str(tmp_path), run_name="run"))
    assert (trainer.run_dir / "skipped_files.txt").read_text() == f"{files[1]}: found the word bad; expected good files\n"


def test_files_that_passed_are_not_checked_again_until_they_change(tmp_path, monkeypatch):
    monkeypatch.setenv("SCIMAE_CACHE", str(tmp_path / "cache"))
    files = _files(tmp_path, "ok", "ok", "bad")
    CHECKED.clear()
    preflight(files, _check, "records", "skip")
    assert CHECKED == ["f0.txt", "f1.txt", "f2.txt"]
    CHECKED.clear()
    files[1].write_text("still ok, but changed")
    os.utime(files[1], ns=(1, 1))
    assert preflight(files, _check, "records", "skip") == files[:2]
    assert CHECKED == ["f1.txt", "f2.txt"]  # the unchanged good file is skipped, the bad one checked again
    assert len(list((tmp_path / "cache" / "preflight").iterdir())) == 1  # one record for this dataset folder


def test_worker_processes_give_the_same_answer(tmp_path):
    files = _files(tmp_path, *(["ok"] * 5 + ["bad"] + ["ok"] * 4))
    kept = preflight(files, _check, "records", "skip", workers=2, cache=tmp_path / "cache.json")
    assert kept == files[:5] + files[6:]
