"""Checksums of the training data named in the report."""

from __future__ import annotations

from pathlib import Path

from confit import Config

from tuner.data_checksum import data_checksums, path_checksum

CONFIG = """\
train:
  train_data:
    data:
      "@readers": standoff
      path: ./data/train
  val_data:
    "@readers": standoff
    path: ./data/missing
"""


def write_corpus(folder: Path) -> None:
    (folder / "sub").mkdir(parents=True)
    (folder / "a.txt").write_text("Patient text.")
    (folder / "a.ann").write_text("T1\tDISO 0 7\tPatient\n")
    (folder / "sub" / "b.txt").write_text("More text.")


def test_checksum_follows_names_and_contents(tmp_path: Path) -> None:
    write_corpus(tmp_path / "one")
    write_corpus(tmp_path / "two")
    digest, files = path_checksum(tmp_path / "one")
    assert files == 3
    assert path_checksum(tmp_path / "two") == (digest, 3)

    (tmp_path / "two" / ".a.txt.swp").write_text("editor state")
    assert path_checksum(tmp_path / "two") == (digest, 3)
    (tmp_path / "two" / "sub" / "b.txt").write_text("More text!")
    assert path_checksum(tmp_path / "two")[0] != digest
    (tmp_path / "one" / "sub" / "b.txt").rename(tmp_path / "one" / "sub" / "c.txt")
    assert path_checksum(tmp_path / "one")[0] != digest


def test_config_data_paths_described(tmp_path: Path) -> None:
    write_corpus(tmp_path / "data" / "train")
    config = Config.from_yaml_str(CONFIG)
    described = data_checksums(config, tmp_path)
    digest, _ = path_checksum(tmp_path / "data" / "train")
    assert described == {
        "train.train_data.data.path": f"{tmp_path / 'data' / 'train'}: sha256 {digest} (3 files)",
        "train.val_data.path": f"{tmp_path / 'data' / 'missing'}: not found when the report was "
        "written",
    }
