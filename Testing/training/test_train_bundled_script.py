"""scripts/train_bundled.sh, run for real in a scratch copy of the repository with stand-ins for the heavy tools.

The script's own logic is what is tested: it resumes from the repository's state, gives the trainer the
allocator setting, and writes the state back also when the trainer was stopped early (which once made the
script exit before copying, losing a session's training).
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
STATE = "Training/runs/wholebody/state.pt"
LOGS = "Training/runs/wholebody"
RELEASE_LOGS = "VeloxSegSlicer/Resources/Models/training"
RUN = "work-data/runs/wholebody"

# What the stand-in trainer does: record its arguments and allocator setting, optionally save a checkpoint
# and logs as the real trainer does when it stops, then exit with the given status.
FAKE_TRAINER = """#!/usr/bin/env bash
echo "$* | ${GLIBC_TUNABLES:-}" >> "$CALLS"
if [ "$1" = train ]; then
  if [ -n "${STUB_SAVE:-}" ]; then
    mkdir -p work-data/runs/wholebody/checkpoints
    echo "$STUB_SAVE" > work-data/runs/wholebody/checkpoints/last.pt
    echo "steps of $STUB_SAVE" > work-data/runs/wholebody/log_steps.csv
    echo "epochs of $STUB_SAVE" > work-data/runs/wholebody/log_epochs.csv
  fi
  exit "$STUB_EXIT"
fi
"""

# The stand-in python: the fingerprint check passes; compacting the run state copies it (marked as compacted).
STAND_IN_PYTHON = """#!/usr/bin/env bash
if [ "$1 $2" = "-m veloxseg_train.run_state" ]; then
  { cat "$3"; echo "(compacted)"; } > "$4"
fi
exit 0
"""


def _executable(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


@pytest.fixture()
def scratch(tmp_path):
    """A repository skeleton: the real script, stand-in setup/trainer/python, data already prepared."""
    root = tmp_path / "repo"
    (root / "scripts").mkdir(parents=True)
    shutil.copy2(REPO / "scripts" / "train_bundled.sh", root / "scripts" / "train_bundled.sh")
    _executable(root / "scripts" / "setup.sh", "#!/usr/bin/env bash\nexit 0\n")
    _executable(root / ".venv" / "bin" / "veloxseg-train", FAKE_TRAINER)
    _executable(root / ".venv" / "bin" / "python", STAND_IN_PYTHON)
    for marker in ("work-data/prep2/dataset.json", "work-data/heldout/manifest.json",
                   "Training/runs/wholebody/data_fingerprint.json"):
        (root / marker).parent.mkdir(parents=True, exist_ok=True)
        (root / marker).write_text("{}")
    (root / STATE).write_text("repository state\n")
    (root / LOGS).mkdir(parents=True, exist_ok=True)
    (root / LOGS / "log_steps.csv").write_text("old steps\n")
    (root / LOGS / "log_epochs.csv").write_text("old epochs\n")
    return root


def _run(root: Path, **env) -> subprocess.CompletedProcess:
    environment = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
    environment.update(CALLS=str(root / "calls.txt"), TRAIN_MINUTES="1", **env)
    return subprocess.run(["bash", str(root / "scripts" / "train_bundled.sh")], cwd=root, env=environment,
                          capture_output=True, text=True, timeout=60)


def _calls(root: Path):
    return (root / "calls.txt").read_text().splitlines()


@pytest.mark.skipif(sys.platform == "win32", reason="a bash script")
def test_a_trainer_stopped_early_still_leaves_its_state_in_the_repository(scratch):
    done = _run(scratch, STUB_SAVE="state after SIGTERM", STUB_EXIT="130", EXPORT_VERSION="9.9.9")
    assert done.returncode == 130, done.stderr
    assert (scratch / STATE).read_text() == "state after SIGTERM\n(compacted)\n"
    assert (scratch / LOGS / "log_steps.csv").read_text() == "steps of state after SIGTERM\n"
    assert (scratch / LOGS / "log_epochs.csv").read_text() == "epochs of state after SIGTERM\n"
    assert not (scratch / RELEASE_LOGS).exists()  # no model exported: the bundled model's logs stay
    calls = _calls(scratch)
    # it resumed from the repository's state, with the allocator setting, and exported nothing
    assert len(calls) == 1 and calls[0].startswith("train --config Training/configs/wholebody.toml --resume")
    assert "glibc.malloc.mmap_max=0" in calls[0].split(" | ")[1]
    assert not any(c.startswith("export") for c in calls)


@pytest.mark.skipif(sys.platform == "win32", reason="a bash script")
def test_a_finished_session_exports_when_asked_and_a_failed_one_changes_nothing(scratch):
    done = _run(scratch, STUB_SAVE="state at the budget", STUB_EXIT="0", EXPORT_VERSION="9.9.9",
                GLIBC_TUNABLES="glibc.malloc.arena_max=1")
    assert done.returncode == 0, done.stderr
    assert (scratch / STATE).read_text() == "state at the budget\n(compacted)\n"
    calls = _calls(scratch)
    assert calls[0].endswith("| glibc.malloc.arena_max=1")  # the user's own setting wins
    assert [c.split()[0] for c in calls] == ["train", "export", "evaluate", "evaluate"]
    assert (scratch / RELEASE_LOGS / "log_steps.csv").read_text() == "steps of state at the budget\n"

    (scratch / "calls.txt").unlink()
    shutil.rmtree(scratch / RUN)
    failed = _run(scratch, STUB_EXIT="1")  # the trainer fails before saving anything
    assert failed.returncode == 1
    assert (scratch / STATE).read_text() == "state at the budget\n(compacted)\n"
    assert [c.split()[0] for c in _calls(scratch)] == ["train"]
