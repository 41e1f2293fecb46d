"""Bad model packages: edited after sealing, unsealed, a wrong checksum, a corrupt graph, a
feature list that does not match the live FeatureService. Each is refused with a message naming
the mismatch: at start-up the service does not start; at reload (admin route) the running version
keeps serving and the reload answers 409 model_package_invalid.

The deeper checks (checksums, graph, features) are reached by packages that were sealed after
the damage, as a faulty training job would seal them.

The digests remembered between loads (``FileDigests``) never hide a change: a file written in
place (same size), replaced or chmod-ed is hashed again, and a package changed after a load is
refused at its next load.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from models.package import DIGEST_FILE, MANIFEST_FILE, seal_package, sha256_file
from scoring_service.api.app import create_app
from scoring_service.core.errors import ModelPackageInvalid
from scoring_service.deployments.packages import SETTLED_NS, FileDigests, load_package
from tests.fixtures.service import ADMIN_HEADERS, API_HEADERS, settings_for

NAME = "fraud_model"


def edit_manifest(
    package: Path, change: Callable[[dict[str, Any]], None], reseal: bool = True
) -> None:
    manifest = json.loads((package / MANIFEST_FILE).read_text())
    change(manifest)
    (package / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2))
    if reseal:
        seal_package(package)


def edited_after_sealing(package: Path) -> None:
    """A threshold lowered by hand in a published package."""

    def change(manifest: dict[str, Any]) -> None:
        manifest["label_thresholds"]["suspicious"] = 0.0

    edit_manifest(package, change, reseal=False)


def unsealed(package: Path) -> None:
    """A folder that was never sealed by training."""
    (package / DIGEST_FILE).unlink()


def wrong_checksum(package: Path) -> None:
    """The graph changed after the manifest was written (and the folder was sealed again)."""
    graph = package / "model.onnx"
    graph.write_bytes(graph.read_bytes() + b"\0")
    seal_package(package)


def corrupt_graph(package: Path) -> None:
    """Garbage where the graph should be, with a manifest that vouches for it."""
    (package / "model.onnx").write_bytes(b"this is not an ONNX graph" * 100)
    digest = sha256_file(package / "model.onnx")

    def change(manifest: dict[str, Any]) -> None:
        for graph in manifest["graphs"].values():
            if graph["file"] == "model.onnx":
                graph["sha256"] = digest

    edit_manifest(package, change)


def feature_mismatch(package: Path) -> None:
    """A package trained on a feature the live FeatureService does not serve."""

    def change(manifest: dict[str, Any]) -> None:
        view = next(iter(manifest["feature_views"].values()))
        old = view["features"][0]
        view["features"][0] = "renamed_feature"
        manifest["features"] = ["renamed_feature" if f == old else f for f in manifest["features"]]

    edit_manifest(package, change)


BAD = {
    "edited": (edited_after_sealing, r"changed after it was sealed"),
    "unsealed": (unsealed, r"has no package\.sha256"),
    "bad_checksum": (wrong_checksum, r"checksum mismatch for model\.onnx"),
    "bad_graph": (corrupt_graph, r"model\.onnx.*does not load in ONNX Runtime"),
    "bad_features": (
        feature_mismatch,
        r"does not match live feature service fraud_model_v1: .*lacks \['renamed_feature'\]",
    ),
}


@pytest.fixture(scope="module")
def package_root(model_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """v1 (good), v2 (a good copy) and one damaged copy per kind of damage."""
    root = tmp_path_factory.mktemp("packages_bad")
    source = model_root / NAME / "v1"
    for version in ["v1", "v2", *BAD]:
        target = root / NAME / version
        shutil.copytree(source, target)
        edit_manifest(target, lambda m, v=version: m.update(version=v))
        if version in BAD:
            BAD[version][0](target)
    return root


@pytest.mark.parametrize("version", list(BAD))
def test_refused_at_start_up(sqlite_repo: Path, package_root: Path, version: str) -> None:
    settings = settings_for(sqlite_repo, package_root, model_version=version)
    with (
        pytest.raises(ModelPackageInvalid, match=BAD[version][1]),
        TestClient(create_app(settings)),
    ):
        pytest.fail("the service started on a damaged package")


@pytest.fixture(scope="module")
def serving(sqlite_repo: Path, package_root: Path) -> Iterator[TestClient]:
    with TestClient(
        create_app(settings_for(sqlite_repo, package_root)), headers=API_HEADERS
    ) as client:
        yield client


def reload(client: TestClient, version: str) -> Any:
    return client.post(
        "/admin/models/reload", json={"name": NAME, "version": version}, headers=ADMIN_HEADERS
    )


def serving_version(client: TestClient, body: dict) -> str:
    response = client.post("/v1/transactions/score", json=body)
    assert response.status_code == 200, response.text
    return response.json()["model_version"]


@pytest.mark.parametrize("version", [*BAD, "v9"])
def test_refused_at_reload_and_running_version_keeps_serving(
    serving: TestClient, valid_body: dict, version: str
) -> None:
    before = serving_version(serving, valid_body)
    response = reload(serving, version)
    assert response.status_code == 409, response.text
    body = response.json()
    assert (body["code"], body["stage"]) == ("model_package_invalid", "registry")
    pattern = BAD[version][1] if version in BAD else "no model package at"
    assert re.search(pattern, body["message"]), body["message"]
    assert serving_version(serving, valid_body) == before
    assert serving.get("/health/ready").status_code == 200


def test_good_reload_swaps_the_model(serving: TestClient, valid_body: dict) -> None:
    response = reload(serving, "v2")
    assert response.status_code == 200, response.text
    assert response.json()["model_version"] == f"{NAME}/v2"
    assert serving_version(serving, valid_body) == f"{NAME}/v2"
    config = serving.get("/admin/config", headers=ADMIN_HEADERS).json()
    assert config["model"]["model_version"] == f"{NAME}/v2"
    assert reload(serving, "v1").status_code == 200
    assert serving_version(serving, valid_body) == f"{NAME}/v1"


def test_signed_packages_only_when_a_key_is_configured(
    sqlite_repo: Path, model_root: Path, tmp_path: Path
) -> None:
    from feature_repo.layout import open_store

    store = open_store(sqlite_repo)
    package = tmp_path / "v1"
    shutil.copytree(model_root / NAME / "v1", package)
    with pytest.raises(ModelPackageInvalid, match="is not signed"):
        load_package(package, store, signing_key=b"release-key")
    seal_package(package, b"release-key")
    assert load_package(package, store, signing_key=b"release-key").manifest.version == "v1"
    with pytest.raises(ModelPackageInvalid, match="does not verify"):
        load_package(package, store, signing_key=b"another-key")
    # Signed or not, a package loads without a configured key as long as its seal holds.
    assert load_package(package, store).manifest.name == NAME


def settled(*files: Path) -> None:
    """Wait until the files' last change is older than the time a digest needs to be kept."""
    newest = max(file.stat().st_ctime_ns for file in files)
    wait = (newest + SETTLED_NS - time.time_ns()) / 1e9
    if wait > 0:
        time.sleep(wait + 0.05)


def overwrite_in_place(file: Path) -> None:
    """One byte changed, the size and the inode kept."""
    with file.open("r+b") as handle:
        handle.seek(file.stat().st_size // 2)
        byte = handle.read(1)
        handle.seek(-1, os.SEEK_CUR)
        handle.write(bytes([byte[0] ^ 0xFF]))


def test_file_digests_remember_an_unchanged_file_and_hash_a_changed_one_again(
    tmp_path: Path,
) -> None:
    digests = FileDigests()
    files = {name: tmp_path / name for name in ("written", "replaced", "chmod")}
    for i, file in enumerate(files.values()):
        file.write_bytes(bytes([i]) * 70_000)
    settled(*files.values())
    first = {name: digests.sha256(file) for name, file in files.items()}
    assert first == {name: sha256_file(file) for name, file in files.items()}
    assert digests.hashed == 3
    assert {name: digests.sha256(file) for name, file in files.items()} == first
    assert digests.hashed == 3  # answered from memory

    overwrite_in_place(files["written"])
    other = tmp_path / "other"
    other.write_bytes(bytes([9]) * 70_000)
    os.replace(other, files["replaced"])
    files["chmod"].chmod(0o600)
    again = {name: digests.sha256(file) for name, file in files.items()}
    assert digests.hashed == 6  # every change moved the file's key
    assert again == {name: sha256_file(file) for name, file in files.items()}
    assert again["written"] != first["written"]
    assert again["replaced"] != first["replaced"]
    assert again["chmod"] == first["chmod"]
    # Changed moments ago: not remembered (a change within the file system's timestamp
    # granularity could keep the key), so hashed on every call until it settles.
    digests.sha256(files["written"])
    assert digests.hashed == 7


@pytest.mark.parametrize("change", ["in_place", "replaced"])
def test_a_package_changed_after_a_load_is_refused_at_its_next_load(
    sqlite_repo: Path, model_root: Path, tmp_path: Path, change: str
) -> None:
    from feature_repo.layout import open_store

    store = open_store(sqlite_repo)
    package = tmp_path / "v1"
    shutil.copytree(model_root / NAME / "v1", package)
    graph = package / "model.onnx"
    settled(*package.iterdir())
    load_package(package, store)  # its digests are now remembered
    if change == "in_place":
        overwrite_in_place(graph)
    else:
        payload = bytearray(graph.read_bytes())
        payload[len(payload) // 2] ^= 0xFF
        (package / "model.onnx.new").write_bytes(bytes(payload))
        os.replace(package / "model.onnx.new", graph)
    with pytest.raises(ModelPackageInvalid, match="changed after it was sealed"):
        load_package(package, store)
