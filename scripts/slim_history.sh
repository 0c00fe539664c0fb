#!/usr/bin/env bash
# Rewrite a fresh clone's history without the superseded large binaries, keeping every commit.
#
#   git clone --no-local /work/main /tmp/slim
#   scripts/slim_history.sh [--min-bytes N] [--report FILE] [--no-measure] /tmp/slim
#
# What it removes: every version of a file over --min-bytes (default 1,000,000 bytes) that is reachable
# from some ref but is not in the HEAD commit's tree — the superseded copies of
# Training/runs/wholebody/state.pt and veloxseg.onnx, the removed parity files, old screenshots. Nothing in
# HEAD's tree is removed (a blob is kept wherever it appears if HEAD holds it under any path).
# What it keeps: every commit (none pruned, even one that only changed a stripped file: it becomes empty),
# its message byte for byte (--preserve-commit-hashes: no message holds a commit id today), its authors,
# committers and dates, its parents (mapped), and its tree minus the stripped files.
# How: git-filter-repo (`pip install git-filter-repo`; in the dev extras of pyproject.toml) with
# --strip-blobs-with-ids, --prune-empty never, --prune-degenerate never, --no-ff. filter-repo refuses a
# clone that is not fresh; this script also refuses a dirty or shallow one. The ids in the clone's history
# change; its `origin` remote is removed by filter-repo (so nothing is pushed by accident).
# Checks (the report, in .git/slim-history-report.txt of the clone unless --report): the commit count
# before and after; for every old -> new commit of filter-repo's commit-map the same message, author and
# committer lines and mapped parents; each new tree equal to the old one minus exactly the stripped blobs
# (every difference listed by path, any other difference is an error); HEAD's tree unchanged; no stripped
# blob left in the object store. Then scripts/check_index.py measures a fresh clone of the result (the
# Extensions Index's checks; exit status 1 if the clone is over 60 MB) unless --no-measure.
# Exit status: 0 all verified (and measured within the targets), 1 a verification failed or the
# measurement failed, 2 refused (usage, dirty, shallow, no filter-repo).
#
# Publishing (the next session; in a submission with nothing else in it):
#   1. Commit everything in /work/main first (the compact state included); `git status` clean.
#   2. git clone --no-local /work/main /tmp/slim && scripts/slim_history.sh /tmp/slim
#      -> read the report: "VERIFIED", commits N -> N, fresh clone <= 60 MB.
#   3. Force-update main to the rewritten history (the rewrite is the only change), e.g. in /work/main:
#        git fetch /tmp/slim main:refs/slim/main
#        git reset --hard refs/slim/main && git update-ref -d refs/slim/main
#        git reflog expire --expire=now --all && git gc --prune=now --aggressive
#      and, where main is pushed to a server, `git push --force-with-lease origin main`.
#      Other branches or clones made from the old history must be rebased onto the new one
#      (git rebase --onto <new main> <old main> <branch>); never merge the old history back.
#   4. python scripts/check_index.py   (on the force-updated main: a fresh clone <= 60 MB, all checks ok)
#   If the landing refuses a rewritten (non-fast-forward) main, publish the extension from a project script
#   as a slim repository instead: docs/architecture.md, "Repository size".
set -euo pipefail

usage() { sed -n '2,5p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }
refuse() { echo "slim_history: refused: $*" >&2; exit 2; }

min_bytes=1000000
report=""
measure=1
clone=""
while [ $# -gt 0 ]; do
  case "$1" in
    --min-bytes) min_bytes="${2:?--min-bytes needs a number}"; shift 2 ;;
    --report) report="${2:?--report needs a file}"; shift 2 ;;
    --no-measure) measure=0; shift ;;
    -h|--help) usage ;;
    -*) echo "unknown option $1" >&2; usage ;;
    *) [ -z "$clone" ] || usage; clone="$1"; shift ;;
  esac
done
[ -n "$clone" ] || usage
[[ "$min_bytes" =~ ^[0-9]+$ ]] || refuse "--min-bytes must be a whole number of bytes, not '$min_bytes'"

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
python="${PYTHON:-python3}"
clone="$(cd "$clone" && git rev-parse --show-toplevel)" || refuse "$clone is not a git work tree"
cd "$clone"
git_dir="$(cd "$(git rev-parse --git-dir)" && pwd)"
report="${report:-$git_dir/slim-history-report.txt}"

[ "$(git rev-parse --is-shallow-repository)" = false ] || refuse "$clone is a shallow clone: clone the whole history"
git rev-parse --verify --quiet HEAD >/dev/null || refuse "$clone has no commit"
[ -z "$(git status --porcelain --untracked-files=all)" ] \
  || refuse "$clone has uncommitted changes or untracked files (git status): commit them in the source and clone again"
[ ! -e "$git_dir/filter-repo/already_ran" ] || refuse "filter-repo already ran in $clone: start from a fresh clone"

# git-filter-repo: $FILTER_REPO, on PATH, in this project's .venv, else installed into a temporary venv.
work="$(mktemp -d "${TMPDIR:-/tmp}/slim_history.XXXXXX")"
trap 'rm -rf "$work"' EXIT
filter_repo="${FILTER_REPO:-}"
if [ -z "$filter_repo" ]; then
  if command -v git-filter-repo >/dev/null 2>&1; then
    filter_repo="$(command -v git-filter-repo)"
  elif [ -x "$here/../.venv/bin/git-filter-repo" ]; then
    filter_repo="$here/../.venv/bin/git-filter-repo"
  else
    echo "git-filter-repo not found: installing it into a temporary venv (pip install git-filter-repo)" >&2
    "$python" -m venv "$work/venv" && "$work/venv/bin/python" -m pip install -q git-filter-repo >&2 \
      || refuse "git-filter-repo could not be installed: pip install git-filter-repo, or set FILTER_REPO"
    filter_repo="$work/venv/bin/git-filter-repo"
  fi
fi
"$filter_repo" --version >/dev/null 2>&1 || refuse "$filter_repo does not run"

# The Python half: lists what to strip, snapshots every commit, verifies the rewrite against the snapshot.
cat >"$work/slim.py" <<'PY'
"""slim_history.sh's helper: `plan MIN_BYTES OUT_DIR`, `verify OUT_DIR REPORT`."""
import json
import subprocess
import sys
from pathlib import Path


def git(*args, text=True, data=None):
    return subprocess.run(["git", *args], check=True, capture_output=True, text=text, input=data).stdout


def reachable_blobs():
    """{blob id: (size, path)} for every blob reachable from any ref (one path per blob, as git lists it)."""
    objects = git("rev-list", "--objects", "--all").splitlines()
    paths = {line[:line.index(" ")]: line[line.index(" ") + 1:] for line in objects if " " in line}
    checked = git("cat-file", "--batch-check=%(objectname) %(objecttype) %(objectsize)",
                  data="\n".join(paths) + "\n").splitlines()
    return {oid: (int(size), paths[oid]) for oid, kind, size in (line.split() for line in checked) if kind == "blob"}


def tree(commit):
    """{path: 'mode type id'} of every entry of the commit's tree (gitlinks included)."""
    entries = {}
    for record in git("ls-tree", "-r", "-z", "--full-tree", commit).split("\0"):
        if record:
            meta, path = record.split("\t", 1)
            entries[path] = meta
    return entries


def commits():
    """{commit: {'parents', 'author', 'committer', 'message', 'tree'}} of every commit reachable from a ref."""
    result = {}
    for commit in git("rev-list", "--all").split():
        raw = subprocess.run(["git", "cat-file", "commit", commit], check=True, capture_output=True).stdout
        header, _, message = raw.partition(b"\n\n")
        lines = header.decode("utf-8", "surrogateescape").split("\n")
        result[commit] = {
            "parents": [line[7:] for line in lines if line.startswith("parent ")],
            "author": next(line for line in lines if line.startswith("author ")),
            "committer": next(line for line in lines if line.startswith("committer ")),
            "extra": [line for line in lines if not line.startswith(("tree ", "parent ", "author ", "committer "))],
            "message": message.decode("utf-8", "surrogateescape"),
            "tree": tree(commit),
        }
    return result


def plan(min_bytes, out):
    head = {meta.split()[2] for meta in tree("HEAD").values()}
    blobs = reachable_blobs()
    strip = {oid: blobs[oid] for oid in blobs if blobs[oid][0] > min_bytes and oid not in head}
    (out / "strip-ids").write_text("".join(f"{oid}\n" for oid in sorted(strip)))
    snapshot = {"head": git("rev-parse", "HEAD").strip(), "strip": strip, "commits": commits(),
                "head_tree": tree("HEAD")}
    (out / "before.json").write_text(json.dumps(snapshot))
    print(f"{len(strip)} blob versions over {min_bytes:,} bytes not in HEAD: "
          f"{sum(size for size, _ in strip.values()) / 1e6:.1f} MB")


def verify(out, report_path):
    before = json.loads((out / "before.json").read_text())
    strip = before["strip"]
    old = before["commits"]
    new = commits()
    mapping = {}
    commit_map = Path(git("rev-parse", "--git-dir").strip()) / "filter-repo" / "commit-map"
    for line in commit_map.read_text().split("\n")[1:]:
        if line.strip():
            a, b = line.split()
            mapping[a] = b
    errors, lines, metadata_errors = [], [], 0
    lines.append(f"source HEAD {before['head']} -> rewritten HEAD {git('rev-parse', 'HEAD').strip()}")
    lines.append(f"commits: {len(old)} before, {len(new)} after")
    if len(old) != len(new):
        errors.append(f"commit count changed: {len(old)} -> {len(new)}")
    stripped_paths = {}
    for commit, info in old.items():
        target = mapping.get(commit)
        if not target or set(target) == {"0"} or target not in new:
            errors.append(f"{commit}: no rewritten commit (pruned?)")
            continue
        now = new[target]
        for key in ("message", "author", "committer", "extra"):
            if info[key] != now[key]:
                metadata_errors += 1
                errors.append(f"{commit} -> {target}: the {key} differs")
        if [mapping.get(p) for p in info["parents"]] != now["parents"]:
            metadata_errors += 1
            errors.append(f"{commit} -> {target}: parents {info['parents']} do not map to {now['parents']}")
        for path in set(info["tree"]) | set(now["tree"]):
            was, is_now = info["tree"].get(path), now["tree"].get(path)
            if was == is_now:
                continue
            if was is not None and is_now is None and was.split()[2] in strip:
                stripped_paths[path] = stripped_paths.get(path, 0) + 1
            else:
                errors.append(f"{commit} -> {target}: {path} differs ({was} -> {is_now}) and was not stripped")
    if tree("HEAD") != before["head_tree"]:
        errors.append("HEAD's tree changed")
    left = [oid for oid in strip
            if subprocess.run(["git", "cat-file", "-e", oid], capture_output=True).returncode == 0]
    if left:
        errors.append(f"{len(left)} stripped blobs are still in the object store: {left[:5]}")
    lines.append(f"every old -> new commit: same message, author, committer and mapped parents: "
                 f"{'NO' if metadata_errors else 'yes'} ({len(mapping)} commits in filter-repo's commit-map)")
    lines.append(f"HEAD's tree unchanged: {'yes' if tree('HEAD') == before['head_tree'] else 'NO'}")
    lines.append(f"stripped: {len(strip)} blob versions, {sum(s for s, _ in strip.values()) / 1e6:.1f} MB; "
                 f"still in the object store: {len(left)}")
    for oid, (size, path) in sorted(strip.items(), key=lambda item: (item[1][1], -item[1][0])):
        lines.append(f"  {size / 1e6:8.2f} MB  {oid[:12]}  {path}")
    lines.append("the only tree differences (path: commits that lost it, each time a stripped version):")
    lines.extend(f"  {path}: {count}" for path, count in sorted(stripped_paths.items()))
    lines.extend(f"ERROR {e}" for e in errors[:200])
    lines.append("VERIFIED" if not errors else f"FAILED: {len(errors)} errors")
    Path(report_path).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 1 if errors else 0


if __name__ == "__main__":
    if sys.argv[1] == "plan":
        plan(int(sys.argv[2]), Path(sys.argv[3]))
    else:
        sys.exit(verify(Path(sys.argv[2]), sys.argv[3]))
PY

echo "== slim_history: $clone (HEAD $(git rev-parse --short HEAD), $(git rev-list --all --count) commits)"
"$python" "$work/slim.py" plan "$min_bytes" "$work"
if [ ! -s "$work/strip-ids" ]; then
  echo "nothing to strip: every blob over $min_bytes bytes is in HEAD" | tee "$report"
  exit 0
fi

"$filter_repo" --strip-blobs-with-ids "$work/strip-ids" \
  --prune-empty never --prune-degenerate never --no-ff \
  --preserve-commit-hashes --replace-refs delete-no-add

status=0
"$python" "$work/slim.py" verify "$work" "$report" || status=1
echo "report: $report"

if [ "$measure" = 1 ] && [ "$status" = 0 ]; then
  check="$clone/scripts/check_index.py"
  [ -f "$check" ] || check="$here/check_index.py"
  description="$clone/VeloxSeg.json"
  echo "== measuring a fresh clone of the result: $check --repo $clone --branch $(git branch --show-current)"
  if "$python" "$check" --repo "$clone" --branch "$(git branch --show-current)" --description "$description" \
      | tee -a "$report"; then
    :
  else
    status=1
  fi
fi
exit "$status"
