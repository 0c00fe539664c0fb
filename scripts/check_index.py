#!/usr/bin/env python3
"""Check this repository as the Slicer Extensions Index would, on a fresh clone of main.

    python scripts/check_index.py [--repo PATH_OR_URL] [--branch main] [--description VeloxSeg.json]
                                  [--limit-mb 100] [--target-mb 60] [--keep]

The Index's checks (Slicer/ExtensionsIndex, scripts/check_description_files.py) clone the repository
named by the catalog entry (the whole history when `scm_revision` is set, as ours is, then check that
revision out; otherwise a depth-1 clone) and look at the clone and the entry. This script does the same
offline, in its own code, on a fresh `git clone --no-local` of this repository (or --repo):
- size: every file of the clone, `.git` included, against the Index's 100 MB and this project's 60 MB;
  the largest blobs in the history are listed when either is exceeded;
- the catalog entry (VeloxSeg.json): valid JSON, valid against the catalog-entry schema kept in
  Testing/slicer/schemas (the Index downloads it from `$schema`), `scm_url` of scheme git or https, a
  repository name containing "Slicer";
- the clone's CMakeLists.txt: project() named as the entry's file, EXTENSION_ICONURL and
  EXTENSION_SCREENSHOTURLS set to http(s) URLs (the Index downloads them; here a raw.githubusercontent URL
  of this repository must name a PNG, JPEG or GIF file present in the clone);
- a licence file in the clone's root.
Prints one line per check; exit status 0 when all pass, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Iterator, List, Tuple
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = ROOT / "Testing" / "slicer" / "schemas" / "slicer-extension-catalog-entry-schema-v1.0.2.json"
MB = 1_000_000
LICENCE_NAMES = ("LICENSE", "LICENCE", "LICENSE.txt", "License.txt", "license.txt", "COPYING", "COPYING.txt")
IMAGE_MAGIC = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF87a", b"GIF89a")

Result = Tuple[bool, str]


def git(*args: str, cwd: Path = None) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout


def fresh_clone(repo: str, branch: str, revision: str, target: Path) -> None:
    """Clone as the Index does: the whole history and a checkout of `revision` when the entry names one,
    else only the last commit. --no-local copies objects through git's transport, as from a server."""
    if revision:
        git("clone", "--no-local", "--branch", branch, repo, str(target))
        git("checkout", "--quiet", revision, cwd=target)
    else:
        source = repo if "://" in repo else Path(repo).resolve().as_uri()  # --depth needs a URL
        git("clone", "--depth", "1", "--branch", branch, source, str(target))


def tree_bytes(folder: Path) -> int:
    """Bytes of every file under `folder` (links counted as links, not followed)."""
    total = 0
    for base, _, files in os.walk(folder):
        total += sum(os.lstat(os.path.join(base, name)).st_size for name in files)
    return total


def largest_blobs(clone: Path, count: int = 8) -> List[str]:
    """The largest file versions anywhere in the clone's history, as 'size path'."""
    objects = git("rev-list", "--objects", "--all", cwd=clone).splitlines()
    paths = dict(line.split(" ", 1) for line in objects if " " in line)
    checked = subprocess.run(["git", "cat-file", "--batch-check=%(objectname) %(objecttype) %(objectsize)"],
                             cwd=clone, input="\n".join(paths) + "\n", capture_output=True, text=True,
                             check=True).stdout.splitlines()
    blobs = sorted(((int(size), name) for name, kind, size in (line.split() for line in checked) if kind == "blob"),
                   reverse=True)[:count]
    return [f"{size / MB:8.1f} MB  {paths[name]}" for size, name in blobs]


def schema_errors(value, schema: dict, where: str = "$") -> Iterator[str]:
    """Violations of the JSON Schema keywords the catalog schema uses (type, enum, required,
    additionalProperties, properties, items, minimum, maximum)."""
    types = {"object": dict, "array": list, "string": str, "boolean": bool, "integer": int, "number": (int, float)}
    expected = schema.get("type")
    if expected:
        ok = isinstance(value, types[expected]) and not (expected in ("integer", "number") and isinstance(value, bool))
        if not ok:
            yield f"{where}: expected {expected}, got {type(value).__name__}"
            return
    if "enum" in schema and value not in schema["enum"]:
        yield f"{where}: {value!r} is not one of {schema['enum']}"
    if "minimum" in schema and value < schema["minimum"]:
        yield f"{where}: {value} < minimum {schema['minimum']}"
    if "maximum" in schema and value > schema["maximum"]:
        yield f"{where}: {value} > maximum {schema['maximum']}"
    if isinstance(value, dict):
        properties = schema.get("properties", {})
        for key in schema.get("required", []):
            if key not in value:
                yield f"{where}: '{key}' is required"
        for key, item in value.items():
            if key in properties:
                yield from schema_errors(item, properties[key], f"{where}.{key}")
            elif schema.get("additionalProperties") is False:
                yield f"{where}: '{key}' is not allowed"
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        for index, item in enumerate(value):
            yield from schema_errors(item, schema["items"], f"{where}[{index}]")


def check_description(entry: dict, name: str) -> List[Result]:
    results = []
    schema = json.loads(SCHEMA.read_text())
    if entry.get("$schema", "").rstrip("#") != schema["$id"].rstrip("#"):
        results.append((False, f"$schema is {entry.get('$schema')!r}; the schema kept here is {schema['$id']}"))
    errors = list(schema_errors(entry, schema))
    results.append((not errors, "catalog entry matches its schema" + (": " + "; ".join(errors) if errors else "")))
    url = entry.get("scm_url", "")
    parts = urlsplit(url)
    results.append((parts.scheme in ("git", "https") and "://" in url, f"scm_url {url!r} has scheme git or https"))
    repository = Path(parts.path).stem
    results.append(("slicer" in repository.lower(), f"repository name {repository!r} contains 'Slicer'"))
    return results


def check_clone(clone: Path, name: str, scm_url: str) -> List[Result]:
    results = []
    cmake = clone / "CMakeLists.txt"
    text = cmake.read_text(errors="replace") if cmake.is_file() else ""
    project = re.search(r"project\s*\(\s*([^\s)]+)", text, re.IGNORECASE)
    project_name = project.group(1).strip("\"'") if project else None
    results.append((project_name == name, f"CMakeLists.txt project({project_name}) is named as {name}.json"))
    owner_repo = urlsplit(scm_url).path.strip("/").removesuffix(".git").lower()
    for variable in ("EXTENSION_ICONURL", "EXTENSION_SCREENSHOTURLS"):
        match = re.search(rf"set\s*\(\s*{variable}\s+\"([^\"]+)\"", text, re.IGNORECASE)
        urls = match.group(1).split() if match else []
        results.append((bool(urls) and all(u.startswith(("http://", "https://")) for u in urls),
                        f"{variable} set to http(s) URLs: {urls}"))
        for url in urls:
            parts = urlsplit(url)
            segments = parts.path.strip("/").split("/")
            if parts.netloc != "raw.githubusercontent.com" or "/".join(segments[:2]).lower() != owner_repo:
                results.append((True, f"{url}: not in this repository, not checked offline"))
                continue
            file = clone.joinpath(*segments[3:])  # owner/repo/revision/path...
            is_image = file.is_file() and file.read_bytes()[:8].startswith(IMAGE_MAGIC)
            results.append((is_image, f"{url} is a PNG/JPEG/GIF image in the clone ({file.relative_to(clone)})"))
    licence = next((n for n in LICENCE_NAMES if (clone / n).is_file()), None)
    results.append((licence is not None, f"licence file in the repository root: {licence}"))
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo", default=str(ROOT), help="repository to clone (default: this one)")
    parser.add_argument("--branch", default="main")
    parser.add_argument("--description", type=Path, default=ROOT / "VeloxSeg.json", help="the catalog entry")
    parser.add_argument("--limit-mb", type=float, default=100.0, help="the Index's limit (default 100 MB)")
    parser.add_argument("--target-mb", type=float, default=60.0, help="this project's target (default 60 MB)")
    parser.add_argument("--keep", action="store_true", help="keep the clone and print where it is")
    args = parser.parse_args()

    name = args.description.stem
    results: List[Result] = []
    try:
        entry = json.loads(args.description.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        print(f"FAIL  {args.description} cannot be read as JSON: {exc}")
        return 1
    results += check_description(entry, name)

    work = Path(tempfile.mkdtemp(prefix=f"index_check_{name}_"))
    clone = work / "clone"
    try:
        fresh_clone(args.repo, args.branch, entry.get("scm_revision", ""), clone)
        size = tree_bytes(clone)
        pack = tree_bytes(clone / ".git")
        head = git("rev-parse", "--short", "HEAD", cwd=clone).strip()
        print(f"fresh clone of {args.repo} ({args.branch} at {head}): {size / MB:.1f} MB in all, "
              f".git {pack / MB:.1f} MB, work tree {(size - pack) / MB:.1f} MB")
        results.append((size <= args.limit_mb * MB,
                        f"clone size {size / MB:.1f} MB <= the Index's {args.limit_mb:g} MB"))
        results.append((size <= args.target_mb * MB,
                        f"clone size {size / MB:.1f} MB <= this project's target {args.target_mb:g} MB"))
        if size > args.target_mb * MB:
            print("largest file versions in the history:\n" + "\n".join(largest_blobs(clone)))
        results += check_clone(clone, name, entry.get("scm_url", ""))
    except subprocess.CalledProcessError as exc:
        results.append((False, f"git {' '.join(exc.cmd[1:])} failed: {exc.stderr.strip()}"))
    finally:
        if args.keep:
            print(f"clone kept in {clone}")
        else:
            shutil.rmtree(work, ignore_errors=True)

    for ok, message in results:
        print(f"{'ok  ' if ok else 'FAIL'}  {message}")
    failed = sum(not ok for ok, _ in results)
    print(f"{len(results) - failed} checks passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
