"""The hashed locks of infra/locks/: current with pyproject.toml, hashed, serving-only where they
say so, and the ones the Makefile, the images and CI install. The checker runs as `make lint`
runs it, on the committed files or on copies in tmp_path."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.infra.manifests import INFRA, ROOT

LOCKS = INFRA / "locks"
CHECKER = LOCKS / "lock.py"
EXTRAS = {
    "dev.txt": "dev,serve,train,spark,cpu,orchestrate,online",
    "serve-cpu.txt": "serve,cpu",
    "serve-gpu.txt": "serve,gpu",
    "serve-gpu-cuda.txt": "serve,gpu-cuda",
    "pipelines.txt": "none",
    "pipelines-spark.txt": "spark",
    "orchestrate.txt": "orchestrate,train,cpu,online",
}
TRAINING_ONLY = ("lightgbm", "scikit-learn", "onnxmltools", "matplotlib", "onnx")
STALE = "pyproject.toml's dependencies changed since infra/locks/{} was made: run `make lock`"


def check(root: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(CHECKER), "--root", str(root), "check"],
        capture_output=True,
        text=True,
        timeout=60,
    )


def entries(lock: Path) -> list[str]:
    """Each requirement of a lock with its continuation lines, comments left out."""
    out: list[str] = []
    for line in lock.read_text().splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if line.startswith(" "):
            out[-1] += "\n" + line
        else:
            out.append(line)
    return out


def pinned_names(lock: Path) -> set[str]:
    return {entry.split("==")[0] for entry in entries(lock)}


@pytest.fixture
def repo_copy(tmp_path: Path) -> Path:
    """A repository root holding copies of pyproject.toml and of the locks."""
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    shutil.copytree(LOCKS, tmp_path / "infra" / "locks", ignore=shutil.ignore_patterns("*.py*"))
    return tmp_path


def test_committed_locks_are_current() -> None:
    result = check()
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""


def test_every_lock_is_there_for_its_extras() -> None:
    assert {p.name for p in LOCKS.glob("*.txt")} == set(EXTRAS)
    for name, extras in EXTRAS.items():
        assert f"# lock-extras: {extras}\n" in (LOCKS / name).read_text()


@pytest.mark.parametrize("lock", sorted(EXTRAS))
def test_every_entry_is_pinned_with_hashes(lock: str) -> None:
    found = entries(LOCKS / lock)
    assert len(found) > 20
    for entry in found:
        first = entry.splitlines()[0]
        assert re.match(r"^[a-z0-9._-]+==[^ ]+( ; .+)? \\$", first), first
        assert re.search(r"--hash=sha256:[0-9a-f]{64}", entry), first
    # The project is installed after the lock, with --no-deps.
    assert "fraud-scoring-platform" not in pinned_names(LOCKS / lock)


@pytest.mark.parametrize(
    "lock", ["serve-cpu.txt", "serve-gpu.txt", "serve-gpu-cuda.txt", "pipelines.txt"]
)
def test_image_locks_hold_no_training_library(lock: str) -> None:
    assert pinned_names(LOCKS / lock) & set(TRAINING_ONLY) == set()


def test_one_onnx_runtime_build_per_serving_lock() -> None:
    assert "onnxruntime" in pinned_names(LOCKS / "serve-cpu.txt")
    for lock in ("serve-gpu.txt", "serve-gpu-cuda.txt"):
        names = pinned_names(LOCKS / lock)
        assert "onnxruntime-gpu" in names and "onnxruntime" not in names
    assert any(n.startswith("nvidia-cudnn") for n in pinned_names(LOCKS / "serve-gpu-cuda.txt"))


def test_images_install_the_versions_ci_tests() -> None:
    """Every lock follows the dev lock's pins (the GPU runtime aside)."""

    def pins(lock: str) -> set[str]:
        return {entry.splitlines()[0].split(" ")[0] for entry in entries(LOCKS / lock)}

    dev = pins("dev.txt")
    for lock in EXTRAS:
        extra = {p for p in pins(lock) - dev if not p.startswith(("onnxruntime-gpu", "nvidia"))}
        assert extra == set(), lock


def test_a_changed_core_range_makes_every_lock_stale(repo_copy: Path) -> None:
    pyproject = repo_copy / "pyproject.toml"
    text = pyproject.read_text()
    assert '"pandas>=2.2,<3",' in text
    pyproject.write_text(text.replace('"pandas>=2.2,<3",', '"pandas>=2.2,<2.4",'))
    result = check(repo_copy)
    assert result.returncode == 1
    for lock in EXTRAS:
        assert STALE.format(lock) in result.stderr


def test_a_changed_extra_makes_only_its_locks_stale(repo_copy: Path) -> None:
    pyproject = repo_copy / "pyproject.toml"
    text = pyproject.read_text()
    assert '"lightgbm>=4.5,<5",' in text
    pyproject.write_text(text.replace('"lightgbm>=4.5,<5",', '"lightgbm>=4.6,<5",'))
    result = check(repo_copy)
    assert result.returncode == 1
    # The locks that hold the train extra: development and the orchestrator's image.
    assert result.stderr.splitlines() == [STALE.format("dev.txt"), STALE.format("orchestrate.txt")]


def test_order_spacing_and_comments_do_not_count(repo_copy: Path) -> None:
    pyproject = repo_copy / "pyproject.toml"
    text = pyproject.read_text()
    old = '    "pandas>=2.2,<3",\n    "numpy>=1.26,<3",\n'
    assert old in text
    new = '    "numpy >= 1.26, < 3",  # reordered\n    "pandas<3,>=2.2",\n'
    pyproject.write_text(text.replace(old, new))
    result = check(repo_copy)
    assert result.returncode == 0, result.stderr


def test_a_pin_outside_the_range_fails(repo_copy: Path) -> None:
    lock = repo_copy / "infra" / "locks" / "serve-cpu.txt"
    text = lock.read_text()
    (pin,) = re.findall(r"^fastapi==\S+", text, flags=re.MULTILINE)
    lock.write_text(text.replace(pin, "fastapi==0.100.0"))
    result = check(repo_copy)
    assert result.returncode == 1
    assert "infra/locks/serve-cpu.txt pins fastapi 0.100.0, outside pyproject.toml's" in (
        result.stderr
    )


def test_a_missing_lock_fails(repo_copy: Path) -> None:
    (repo_copy / "infra" / "locks" / "serve-gpu.txt").unlink()
    result = check(repo_copy)
    assert result.returncode == 1
    assert "infra/locks/serve-gpu.txt is missing: run `make lock`" in result.stderr


def make_dry_run(tmp_path: Path, *args: str) -> str:
    """The commands make would run to build a fresh venv at tmp_path (nothing runs)."""
    venv = tmp_path / "venv"
    result = subprocess.run(
        ["make", "-n", f"VENV={venv}", *args, f"{venv}/.installed"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_make_setup_installs_the_dev_lock_then_the_project(tmp_path: Path) -> None:
    commands = make_dry_run(tmp_path).splitlines()
    locked = [i for i, c in enumerate(commands) if "--require-hashes -r infra/locks/dev.txt" in c]
    project = [i for i, c in enumerate(commands) if "pip install --quiet --no-deps -e ." in c]
    assert len(locked) == 1 and len(project) == 1 and locked[0] < project[0]
    assert not any("onnxruntime-gpu" in c for c in commands)
    makefile = (ROOT / "Makefile").read_text()
    # A change of either reinstalls.
    assert re.search(r"^\$\(STAMP\): pyproject\.toml \$\(DEV_LOCK\)", makefile, re.MULTILINE)
    assert "DEV_LOCK := $(LOCKS)/dev.txt" in makefile
    assert "\t$(MAKE) --no-print-directory lock-check\n" in makefile


@pytest.mark.parametrize("ort", ["gpu", "gpu-cuda"])
def test_a_gpu_venv_swaps_in_onnxruntime_gpu_from_its_lock(tmp_path: Path, ort: str) -> None:
    commands = make_dry_run(tmp_path, f"ORT={ort}")
    assert "pip uninstall --quiet -y onnxruntime onnxruntime-gpu" in commands
    assert f"--require-hashes -r infra/locks/serve-{ort}.txt" in commands


def test_images_install_from_the_locks() -> None:
    serving = (INFRA / "Dockerfile").read_text()
    assert re.search(r"^ARG ORT=cpu$", serving, flags=re.MULTILINE)
    assert "COPY infra/locks/serve-${ORT}.txt infra/locks/" in serving
    assert '--require-hashes -r "infra/locks/serve-${ORT}.txt"' in serving
    assert "pip install --prefix=/install --no-deps ." in serving
    pipelines = (INFRA / "Dockerfile.pipelines").read_text()
    assert "--require-hashes -r infra/locks/pipelines.txt" in pipelines
    assert "--require-hashes -r /tmp/pipelines-spark.txt" in pipelines
    assert "pip install --prefix=/install --no-deps ." in pipelines
    # Nothing else installs unlocked: every pip install is a lock or the project alone.
    for text in (serving, pipelines):
        for line in re.findall(r"pip install .*", text):
            assert "--require-hashes" in line or "--no-deps" in line, line
    for ignore in ("Dockerfile.dockerignore", "Dockerfile.pipelines.dockerignore"):
        patterns = (INFRA / ignore).read_text().split()
        assert not {"infra", "infra/locks", "infra/locks/*.txt"} & set(patterns)


def test_ci_installs_through_the_locked_setup() -> None:
    ci = (ROOT / ".ci" / "run").read_text()
    assert "make test" in ci
    assert re.search(r"^test: setup ", (ROOT / "Makefile").read_text(), flags=re.MULTILINE)
