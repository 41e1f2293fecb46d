"""Sealing: a package is written whole or not at all, any change after sealing is refused, and a
signature only verifies with the key that made it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from models.package import (
    DIGEST_FILE,
    MANIFEST_FILE,
    SIGNATURE_FILE,
    SIGNING_KEY_ENV,
    PackageIntegrityError,
    checksums,
    package_digest,
    read_manifest,
    seal_package,
    sha256_bytes,
    sha256_file,
    verify_package,
    write_package,
)
from tests.models.package_helpers import GRAPH, toy_files, toy_manifest

KEY = b"signing key of the release job"


@pytest.fixture(autouse=True)
def no_key_in_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(SIGNING_KEY_ENV, raising=False)


@pytest.fixture()
def package(tmp_path: Path) -> Path:
    """A sealed, unsigned toy package."""
    return write_package(tmp_path, toy_manifest(), toy_files())


def test_a_written_package_holds_its_files_its_manifest_and_its_seal(
    tmp_path: Path, package: Path
) -> None:
    assert package == tmp_path / "toy_model" / "v1"
    assert sorted(p.name for p in package.iterdir()) == sorted(
        ["model.onnx", "model.lgb.txt", MANIFEST_FILE, DIGEST_FILE]
    )
    manifest = read_manifest(package)
    assert checksums(manifest) == {name: sha256_bytes(data) for name, data in toy_files().items()}
    for name, digest in checksums(manifest).items():
        assert sha256_file(package / name) == digest
    assert verify_package(package) == package_digest(package)
    assert (package / DIGEST_FILE).read_text().strip() == package_digest(package)
    # Nothing of the staging folder is left beside it.
    assert [p.name for p in package.parent.iterdir()] == ["v1"]


@pytest.mark.parametrize("tamper", ["graph", "manifest", "added file", "removed file"])
def test_a_change_after_sealing_breaks_the_seal(package: Path, tamper: str) -> None:
    if tamper == "graph":
        (package / "model.onnx").write_bytes(GRAPH + b"\x00")
    elif tamper == "manifest":  # a lower threshold: more alerts, with valid per-file checksums
        document = json.loads((package / MANIFEST_FILE).read_text())
        document["label_thresholds"]["suspicious"] = 0.01
        (package / MANIFEST_FILE).write_text(json.dumps(document))
    elif tamper == "added file":
        (package / "extra.onnx").write_bytes(b"another graph")
    else:
        (package / "model.lgb.txt").unlink()
    with pytest.raises(PackageIntegrityError, match="was changed after it was sealed") as caught:
        verify_package(package)
    assert "restore it or retrain" in str(caught.value)
    assert isinstance(caught.value, ValueError)  # loaders refuse it as any invalid package


def test_an_unsealed_package_is_refused(package: Path) -> None:
    (package / DIGEST_FILE).unlink()
    with pytest.raises(PackageIntegrityError, match=f"has no {DIGEST_FILE}"):
        verify_package(package)


def test_a_signature_verifies_only_with_its_key(tmp_path: Path) -> None:
    package = write_package(tmp_path, toy_manifest(), toy_files(), signing_key=KEY)
    assert (package / SIGNATURE_FILE).is_file()
    assert verify_package(package, KEY) == package_digest(package)
    assert verify_package(package, KEY.decode()) == package_digest(package)  # str keys too
    with pytest.raises(PackageIntegrityError, match="does not verify with the configured key"):
        verify_package(package, b"another key")
    # Without a configured key the seal alone is checked.
    assert verify_package(package) == package_digest(package)


def test_a_service_with_a_key_refuses_an_unsigned_package(package: Path) -> None:
    assert not (package / SIGNATURE_FILE).exists()
    with pytest.raises(PackageIntegrityError, match="is not signed"):
        verify_package(package, KEY)


def test_the_signing_key_comes_from_the_environment(
    package: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(SIGNING_KEY_ENV, KEY.decode())
    seal_package(package)
    assert (package / SIGNATURE_FILE).is_file()
    assert verify_package(package) == package_digest(package)
    monkeypatch.setenv(SIGNING_KEY_ENV, "a rotated key")
    with pytest.raises(PackageIntegrityError, match="does not verify"):
        verify_package(package)


def test_resealing_without_a_key_drops_a_stale_signature(tmp_path: Path) -> None:
    package = write_package(tmp_path, toy_manifest(), toy_files(), signing_key=KEY)
    seal_package(package)
    assert not (package / SIGNATURE_FILE).exists()
    with pytest.raises(PackageIntegrityError, match="is not signed"):
        verify_package(package, KEY)


def test_a_file_that_does_not_match_the_manifest_is_never_published(tmp_path: Path) -> None:
    files = {**toy_files(), "model.onnx": b"a different graph"}
    with pytest.raises(ValueError, match=r"checksum of model\.onnx changed while writing"):
        write_package(tmp_path, toy_manifest(), files)
    assert list((tmp_path / "toy_model").iterdir()) == []  # no version, no staging left


def test_a_new_write_replaces_the_version_whole(tmp_path: Path, package: Path) -> None:
    (package / "stale.txt").write_text("from the old package")
    updated = toy_manifest(metrics={"holdout": {"pr_auc": 0.5}})
    again = write_package(tmp_path, updated, toy_files())
    assert again == package
    assert not (package / "stale.txt").exists()
    assert read_manifest(package).metrics == {"holdout": {"pr_auc": 0.5}}
    assert verify_package(package) == package_digest(package)
    assert [p.name for p in package.parent.iterdir()] == ["v1"]
