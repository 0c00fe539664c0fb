"""scripts/slim_history.sh strips superseded large blobs from a clone's history and keeps every commit.

A scratch repository: a 1.2 MB binary replaced several times (once in a commit that changes nothing else),
a large file added then deleted, small files changing alongside. The script runs on a fresh clone of it.
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "slim_history.sh"
BIG = 1_200_000


def _filter_repo() -> str:
    beside_python = Path(sys.executable).parent / "git-filter-repo"
    found = str(beside_python) if beside_python.is_file() else shutil.which("git-filter-repo")
    if not found:
        pytest.skip("git-filter-repo is not installed (pip install git-filter-repo; it is in the dev extras)")
    return found


def _env(step: int = 0) -> dict:
    date = f"2024-01-{step + 1:02d}T12:00:00+0200"
    return {**os.environ, "GIT_AUTHOR_NAME": "A. Author", "GIT_AUTHOR_EMAIL": "author@example.invalid",
            "GIT_COMMITTER_NAME": "C. Committer", "GIT_COMMITTER_EMAIL": "committer@example.invalid",
            "GIT_AUTHOR_DATE": date, "GIT_COMMITTER_DATE": date, "GIT_CONFIG_NOSYSTEM": "1",
            "HOME": os.environ.get("HOME", "/tmp")}


def _git(repo: Path, *args: str, step: int = 0, check: bool = True) -> str:
    return subprocess.run(["git", "-c", "init.defaultBranch=main", *args], cwd=repo, env=_env(step), check=check,
                          capture_output=True, text=True).stdout


def _blob(repo: Path, path: str) -> str:
    return _git(repo, "hash-object", path).strip()


@pytest.fixture()
def history(tmp_path):
    """A source repository; returns (source, {name: blob id} of the stripped versions, HEAD's big blob)."""
    source = tmp_path / "source"
    source.mkdir()
    _git(source, "init", "-q")
    rng = random.Random(7)
    old = {}

    def commit(step: int, message: str, files: dict, remove=()):
        for name, content in files.items():
            (source / name).write_bytes(content)
        for name in remove:
            (source / name).unlink()
        _git(source, "add", "-A")
        _git(source, "commit", "-q", "-m", message, step=step)

    commit(0, "first: code and model v1\n\nwith a body", {"code.py": b"print(1)\n", "model.bin": rng.randbytes(BIG),
                                                        "old.bin": rng.randbytes(BIG)})
    old["model v1"], old["old.bin"] = _blob(source, "model.bin"), _blob(source, "old.bin")
    commit(1, "second: code and model v2", {"code.py": b"print(2)\n", "model.bin": rng.randbytes(BIG)})
    old["model v2"] = _blob(source, "model.bin")
    commit(2, "third: only the model (v3)", {"model.bin": rng.randbytes(BIG)})
    old["model v3"] = _blob(source, "model.bin")
    commit(3, "fourth: old.bin removed, notes added", {"notes.md": b"# notes\n"}, remove=["old.bin"])
    commit(4, "fifth: model v4, the released one", {"model.bin": rng.randbytes(BIG), "code.py": b"print(4)\n"})
    return source, old, _blob(source, "model.bin")


def _commits(repo: Path) -> list:
    """[(message, author and committer with dates, {path: blob} of its small files)] oldest first."""
    result = []
    for commit in _git(repo, "rev-list", "--reverse", "HEAD").split():
        message = _git(repo, "log", "-1", "--format=%B", commit)
        people = _git(repo, "log", "-1", "--format=%an <%ae> %ad | %cn <%ce> %cd", "--date=raw", commit)
        small = {}
        for line in _git(repo, "ls-tree", "-r", "-l", commit).splitlines():
            meta, path = line.split("\t")
            if int(meta.split()[3]) < 1_000_000:
                small[path] = meta.split()[2]
        result.append((message, people, small))
    return result


def _exists(repo: Path, blob: str) -> bool:
    return subprocess.run(["git", "cat-file", "-e", blob], cwd=repo, capture_output=True).returncode == 0


def test_superseded_large_blobs_leave_the_history_and_every_commit_stays(history, tmp_path):
    source, old, released = history
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", "--no-local", str(source), str(clone)], check=True)
    before = _commits(clone)
    assert all(_exists(clone, blob) for blob in old.values())

    run = subprocess.run(["bash", str(SCRIPT), "--no-measure", str(clone)], capture_output=True, text=True,
                         env={**_env(), "FILTER_REPO": _filter_repo(), "PYTHON": sys.executable})
    assert run.returncode == 0, run.stdout + run.stderr
    assert "VERIFIED" in run.stdout
    assert "commits: 5 before, 5 after" in run.stdout

    after = _commits(clone)
    assert len(after) == len(before) == 5
    assert [m for m, _, _ in after] == [m for m, _, _ in before]  # messages, in order, byte for byte
    assert [p for _, p, _ in after] == [p for _, p, _ in before]  # authors, committers and their dates
    assert [s for _, _, s in after] == [s for _, _, s in before]  # every small file in every commit
    for name, blob in old.items():
        assert not _exists(clone, blob), f"{name} ({blob}) is still in the history"
    assert _exists(clone, released)
    assert _git(clone, "rev-parse", "HEAD:model.bin").strip() == released
    assert _blob(clone, "model.bin") == released  # the work tree holds it too
    # the model-only commit is kept, now empty; the first commit has no model any more
    assert _git(clone, "show", "--format=", "--name-only", "HEAD~2").strip() == ""
    assert "model.bin" not in _git(clone, "ls-tree", "--name-only", "HEAD~4")
    report = (clone / ".git" / "slim-history-report.txt").read_text()
    assert "model.bin: 4" in report and "old.bin: 3" in report


def test_a_dirty_clone_is_refused(history, tmp_path):
    source, old, _ = history
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", "--no-local", str(source), str(clone)], check=True)
    (clone / "code.py").write_text("print('uncommitted')\n")
    run = subprocess.run(["bash", str(SCRIPT), "--no-measure", str(clone)], capture_output=True, text=True,
                         env={**_env(), "FILTER_REPO": _filter_repo(), "PYTHON": sys.executable})
    assert run.returncode == 2 and "uncommitted changes" in run.stderr
    assert all(_exists(clone, blob) for blob in old.values())
