"""Locked installs: every dependency set of pyproject.toml pinned, with hashes, in infra/locks/.

    .venv/bin/python infra/locks/lock.py compile [--upgrade]   # `make lock` (`make lock UPGRADE=1`)
    .venv/bin/python infra/locks/lock.py check                 # `make lint`; offline

``compile`` resolves each set with uv for CPython 3.11 on x86-64 Linux (glibc 2.28 or newer, as
in the python:3.11-slim images) and keeps the versions already pinned unless pyproject.toml's
ranges rule them out (``--upgrade`` takes the newest allowed). The development lock is resolved
first and constrains every other one, so the images install exactly the versions CI tests.
Each file records, in its header, the extras it covers and a sha256 of the dependency data it
was made from (requires-python, the core dependencies and those extras, normalised: order,
spacing and comments do not count).

``check`` recomputes that digest from pyproject.toml and fails, naming the file and the fix, when
a lock is missing, stale, pins a version outside pyproject.toml's ranges or lacks a hash.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import re
import subprocess
import sys
import tomllib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
LOCK_DIR = Path("infra/locks")
# File -> the extras it adds to the core dependencies. The first one constrains the others.
LOCKS: dict[str, tuple[str, ...]] = {
    # `make setup` and CI: everything.
    "dev.txt": ("dev", "serve", "train", "spark", "cpu", "orchestrate", "online"),
    # The scoring service image (infra/Dockerfile, build argument ORT=cpu|gpu|gpu-cuda).
    "serve-cpu.txt": ("serve", "cpu"),
    "serve-gpu.txt": ("serve", "gpu"),
    "serve-gpu-cuda.txt": ("serve", "gpu-cuda"),
    # The pipelines image (infra/Dockerfile.pipelines) and its Spark stage.
    "pipelines.txt": (),
    "pipelines-spark.txt": ("spark",),
    # The orchestrator image (infra/orchestration/Dockerfile): Dagster, training, pipelines.
    "orchestrate.txt": ("orchestrate", "train", "cpu", "online"),
}
PYTHON_VERSION = "3.11"
PYTHON_PLATFORM = "x86_64-manylinux_2_28"
# The environment the locks are resolved for, to evaluate pyproject.toml's markers against.
TARGET = {
    "python_version": PYTHON_VERSION,
    "python_full_version": f"{PYTHON_VERSION}.0",
    "sys_platform": "linux",
    "platform_system": "Linux",
    "platform_machine": "x86_64",
    "os_name": "posix",
    "implementation_name": "cpython",
    "platform_python_implementation": "CPython",
}
EXTRAS_LINE = "# lock-extras: "
DIGEST_LINE = "# lock-pyproject-sha256: "
HASH = re.compile(r"--hash=sha256:[0-9a-f]{64}")


@dataclass(frozen=True)
class Pin:
    """One entry of a lock file."""

    requirement: Requirement
    hashes: int

    @property
    def name(self) -> str:
        return canonicalize_name(self.requirement.name)

    @property
    def version(self) -> str | None:
        specs = list(self.requirement.specifier)
        if len(specs) == 1 and specs[0].operator == "==":
            return specs[0].version
        return None


def normalised(requirements: Iterable[str]) -> list[str]:
    """Requirements as sorted canonical strings: name, sorted extras, sorted specifiers, marker."""
    out = []
    for text in requirements:
        req = Requirement(text)
        extras = f"[{','.join(sorted(req.extras))}]" if req.extras else ""
        marker = f"; {req.marker}" if req.marker else ""
        out.append(f"{canonicalize_name(req.name)}{extras}{req.specifier}{marker}")
    return sorted(out)


def dependency_digest(pyproject: dict[str, Any], extras: Sequence[str]) -> str:
    """sha256 of the dependency data a lock covers: requires-python, dependencies, its extras."""
    project = pyproject["project"]
    optional = project.get("optional-dependencies", {})
    data = {
        "requires-python": str(SpecifierSet(project.get("requires-python", ""))),
        "dependencies": normalised(project.get("dependencies", [])),
        "optional-dependencies": {extra: normalised(optional[extra]) for extra in sorted(extras)},
    }
    encoded = json.dumps(data, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(encoded).hexdigest()


def required(pyproject: dict[str, Any], extras: Sequence[str]) -> list[Requirement]:
    """The requirements a lock must satisfy on the target platform."""
    project = pyproject["project"]
    texts = list(project.get("dependencies", []))
    for extra in extras:
        texts += project["optional-dependencies"][extra]
    reqs = [Requirement(text) for text in texts]
    return [r for r in reqs if r.marker is None or r.marker.evaluate({**TARGET, "extra": ""})]


def read_pins(text: str) -> list[Pin]:
    """The entries of a requirements file written by uv (continuation lines joined)."""
    pins: list[Pin] = []
    entry = ""
    for line in text.splitlines():
        stripped = line.strip()
        if not entry and (not stripped or stripped.startswith("#")):
            continue
        entry += " " + stripped.removesuffix("\\")
        if stripped.endswith("\\"):
            continue
        spec = entry.split(" --hash=")[0].strip()
        pins.append(Pin(Requirement(spec), len(HASH.findall(entry))))
        entry = ""
    return pins


def extras_text(extras: Sequence[str]) -> str:
    return ",".join(extras) or "none"


def header_value(text: str, prefix: str) -> str | None:
    for line in text.splitlines():
        if line.startswith(prefix):
            return line.removeprefix(prefix).strip()
    return None


def problems(root: Path) -> list[str]:
    """Every reason the locks under root do not match root/pyproject.toml, as sentences."""
    pyproject = tomllib.loads((root / "pyproject.toml").read_text())
    project_name = canonicalize_name(pyproject["project"]["name"])
    known = set(pyproject["project"].get("optional-dependencies", {}))
    found: list[str] = []
    for name, extras in LOCKS.items():
        lock = LOCK_DIR / name
        missing = sorted(set(extras) - known)
        if missing:
            found.append(
                f"pyproject.toml has no extra {', '.join(missing)} that {lock} covers: "
                f"change LOCKS in {LOCK_DIR / 'lock.py'} or pyproject.toml"
            )
            continue
        path = root / lock
        if not path.is_file():
            found.append(f"{lock} is missing: run `make lock`")
            continue
        text = path.read_text()
        if header_value(text, EXTRAS_LINE) != extras_text(extras):
            found.append(f"{lock} was not made for the extras {list(extras)}: run `make lock`")
            continue
        if header_value(text, DIGEST_LINE) != dependency_digest(pyproject, extras):
            found.append(
                f"pyproject.toml's dependencies changed since {lock} was made: run `make lock`"
            )
            continue
        pins = {pin.name: pin for pin in read_pins(text)}
        for pin in pins.values():
            if pin.version is None:
                found.append(f"{lock}: {pin.requirement} is not pinned with ==: run `make lock`")
            if pin.hashes == 0:
                found.append(f"{lock}: {pin.requirement} has no sha256 hash: run `make lock`")
        if project_name in pins:
            found.append(f"{lock} pins the project itself: it is installed with --no-deps")
        for req in required(pyproject, extras):
            match = pins.get(canonicalize_name(req.name))
            if match is None:
                found.append(f"{lock} has no pin for {req}: run `make lock`")
            elif match.version is not None and not req.specifier.contains(
                match.version, prereleases=True
            ):
                found.append(
                    f"{lock} pins {match.name} {match.version}, outside pyproject.toml's {req}: "
                    "run `make lock`"
                )
    return found


def stamp(path: Path, pyproject: dict[str, Any], extras: Sequence[str]) -> None:
    """Write the extras and the dependency digest under uv's header."""
    lines = path.read_text().splitlines(keepends=True)
    lines = [ln for ln in lines if not ln.startswith((EXTRAS_LINE, DIGEST_LINE))]
    at = next(i for i, ln in enumerate(lines) if not ln.startswith("#"))
    lines[at:at] = [
        f"{EXTRAS_LINE}{extras_text(extras)}\n",
        f"{DIGEST_LINE}{dependency_digest(pyproject, extras)}\n",
    ]
    path.write_text("".join(lines))


def compile_locks(root: Path, upgrade: bool) -> None:
    """Resolve every lock with uv (PyPI) and stamp its header."""
    pyproject = tomllib.loads((root / "pyproject.toml").read_text())
    first = LOCK_DIR / next(iter(LOCKS))
    for name, extras in LOCKS.items():
        lock = LOCK_DIR / name
        command = [
            sys.executable, "-m", "uv", "pip", "compile", "pyproject.toml",
            *(f"--extra={extra}" for extra in extras),
            "--generate-hashes", "--no-strip-markers",
            f"--python-version={PYTHON_VERSION}", f"--python-platform={PYTHON_PLATFORM}",
            "--custom-compile-command=make lock", "--quiet", f"--output-file={lock}",
        ]  # fmt: skip
        if lock != first:
            command.append(f"--constraints={first}")
        if upgrade:
            command.append("--upgrade")
        print(f"locking {lock} (extras: {extras_text(extras)})", file=sys.stderr)
        if subprocess.run(command, cwd=root).returncode != 0:
            raise SystemExit(f"uv could not lock {lock} (its message is above)")
        stamp(root / lock, pyproject, extras)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=ROOT, help="the repository root")
    commands = parser.add_subparsers(dest="command", required=True)
    make = commands.add_parser("compile", help="resolve the locks again (uv, PyPI)")
    make.add_argument("--upgrade", action="store_true", help="take the newest allowed versions")
    commands.add_parser("check", help="fail when a lock does not match pyproject.toml (offline)")
    args = parser.parse_args(argv)
    if args.command == "compile":
        if importlib.util.find_spec("uv") is None:
            print("uv is not installed here: `make setup` installs it (dev extra)", file=sys.stderr)
            return 1
        compile_locks(args.root, args.upgrade)
        return 0
    found = problems(args.root)
    for sentence in found:
        print(sentence, file=sys.stderr)
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
