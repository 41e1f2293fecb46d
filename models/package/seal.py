"""Package integrity: per-file checksums, one seal over the whole folder, an optional signature.

The manifest lists the sha256 of every graph and artefact, but it cannot protect itself (an
edited threshold or version would load without a word); the seal (``package.sha256``) is one
digest over every file of the package, the manifest included, and the signature
(``package.sig``) an HMAC of that digest with ``MODEL_SIGNING_KEY``. ``write_package`` writes,
checks and seals a package in a staging folder and moves it into place atomically;
``verify_package`` is what a loader runs before it serves a package.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from models.package.manifest import MANIFEST_FILE, Manifest, package_dir

DIGEST_FILE = "package.sha256"
SIGNATURE_FILE = "package.sig"
SIGNING_KEY_ENV = "MODEL_SIGNING_KEY"


class PackageIntegrityError(ValueError):
    """A package's files do not match its seal, or its signature does not verify."""


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def sha256_bytes(payload: bytes) -> str:
    """Hex sha256 of bytes in memory."""
    return hashlib.sha256(payload).hexdigest()


def checksums(manifest: Manifest) -> dict[str, str]:
    """Every file of a package with its expected sha256."""
    out = {graph.file: graph.sha256 for graph in manifest.graphs.values()}
    out.update(manifest.artefacts)
    return out


def write_package(
    root: Path, manifest: Manifest, files: dict[str, bytes], signing_key: bytes | None = None
) -> Path:
    """Write graphs and manifest to a temporary folder, seal it, then move it into place atomically.

    A reader never sees a half-written package: either the old version folder or the new one.
    ``signing_key`` (default: ``MODEL_SIGNING_KEY`` from the environment) also signs the seal.
    """
    target = package_dir(root, manifest.name, manifest.version)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{manifest.version}.", dir=target.parent))
    try:
        for file_name, payload in files.items():
            (staging / file_name).write_bytes(payload)
        for file_name, expected in checksums(manifest).items():
            if sha256_file(staging / file_name) != expected:
                raise ValueError(f"checksum of {file_name} changed while writing the package")
        (staging / MANIFEST_FILE).write_text(manifest.model_dump_json(indent=2) + "\n")
        seal_package(staging, signing_key)
        if target.exists():
            backup = target.with_name(f".{manifest.version}.replaced")
            shutil.rmtree(backup, ignore_errors=True)
            os.replace(target, backup)
            os.replace(staging, target)
            shutil.rmtree(backup, ignore_errors=True)
        else:
            os.replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


def package_digest(path: Path, *, hash_file: Callable[[Path], str] = sha256_file) -> str:
    """sha256 over every file of the package (names and contents), seal files excepted.

    ``hash_file`` gives a file's sha256: a loader passes one that remembers each file's digest,
    so the manifest's checksums are checked against the digests the seal was computed from
    (each file read once per load), and that can answer an unchanged file from a cache.
    """
    path = Path(path)
    digest = hashlib.sha256()
    files = sorted(
        p for p in path.rglob("*") if p.is_file() and p.name not in (DIGEST_FILE, SIGNATURE_FILE)
    )
    for file in files:
        digest.update(f"{file.relative_to(path).as_posix()}\0{hash_file(file)}\n".encode())
    return digest.hexdigest()


def _signing_key(key: bytes | str | None) -> bytes | None:
    key = key if key is not None else os.environ.get(SIGNING_KEY_ENV) or None
    return key.encode() if isinstance(key, str) else key


def sign_digest(digest: str, key: bytes) -> str:
    """HMAC-SHA256 of a package digest."""
    return hmac.new(key, digest.encode(), hashlib.sha256).hexdigest()


def seal_package(path: Path, signing_key: bytes | str | None = None) -> str:
    """Write the package's digest (and its signature when a key is given or in the env)."""
    path = Path(path)
    digest = package_digest(path)
    (path / DIGEST_FILE).write_text(digest + "\n")
    key = _signing_key(signing_key)
    signature = path / SIGNATURE_FILE
    if key:
        signature.write_text(sign_digest(digest, key) + "\n")
    else:
        signature.unlink(missing_ok=True)
    return digest


def verify_package(
    path: Path,
    signing_key: bytes | str | None = None,
    *,
    hash_file: Callable[[Path], str] = sha256_file,
) -> str:
    """The package's digest, after checking it against the seal (and the signature when a key
    is configured); PackageIntegrityError naming what is wrong otherwise.

    ``hash_file``: how each file's sha256 is obtained (``package_digest``); the digest over
    them is recomputed and compared with the seal and the signature on every call.
    """
    path = Path(path)
    seal = path / DIGEST_FILE
    if not seal.is_file():
        raise PackageIntegrityError(
            f"package {path} has no {DIGEST_FILE}; it was not written by `models train` "
            "(or was altered): retrain or re-seal it with `python -m models seal`"
        )
    digest = package_digest(path, hash_file=hash_file)
    if not hmac.compare_digest(seal.read_text().strip(), digest):
        raise PackageIntegrityError(
            f"package {path} was changed after it was sealed (its files, manifest included, "
            "do not match package.sha256); restore it or retrain"
        )
    key = _signing_key(signing_key)
    if key:
        signature = path / SIGNATURE_FILE
        if not signature.is_file():
            raise PackageIntegrityError(
                f"package {path} is not signed, and this service only loads signed packages"
            )
        if not hmac.compare_digest(signature.read_text().strip(), sign_digest(digest, key)):
            raise PackageIntegrityError(
                f"the signature of package {path} does not verify with the configured key"
            )
    return digest
