"""Checks the lock (requirements/*.txt) against pyproject.toml, and an environment against the lock.

    python scripts/lockcheck.py                        # every lock file agrees with pyproject.toml (exit 1 if not)
    python scripts/lockcheck.py --pyproject-hash       # the hash scripts/lock.sh writes into each file's header
    python scripts/lockcheck.py --compare-installed requirements/dev.txt
                                                       # which installed versions differ from that lock

A lock file agrees with pyproject.toml when its header carries the hash of pyproject's dependency tables (so
adding, removing or re-ranging a dependency without `bash scripts/lock.sh` is caught) and every requirement of
its extras is pinned at a version inside its range. Used by tests/test_lock.py and scripts/check-latest.sh.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import sys
from pathlib import Path

try:
    import tomllib
except ImportError:  # Python 3.10: pytest brings tomli there
    import tomli as tomllib  # type: ignore[no-redef]

REPO = Path(__file__).resolve().parents[1]
LOCK_DIR = REPO / "requirements"
# torch is installed first, as the build the machine needs; the lock never pins it (scripts/lock.sh)
NOT_LOCKED = {"torch"}
_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)\s*(?:;\s*([^\\]+?))?\s*\\?\s*$")


def _canon(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pyproject(path: Path = REPO / "pyproject.toml") -> dict:
    return tomllib.loads(path.read_text(encoding="utf-8"))["project"]


def pyproject_hash(path: Path = REPO / "pyproject.toml") -> str:
    """sha256 of the tables that decide what gets installed (requires-python, dependencies, extras)."""
    proj = pyproject(path)
    key = {
        "requires-python": proj.get("requires-python"),
        "dependencies": proj.get("dependencies", []),
        "optional-dependencies": proj.get("optional-dependencies", {}),
    }
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def read_lock(path: Path) -> tuple[dict[str, str], list[tuple[str, str, str | None]]]:
    """(header fields, [(name, version, marker)]) of one lock file."""
    header: dict[str, str] = {}
    pins: list[tuple[str, str, str | None]] = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("# pyproject-hash: "):
            header["pyproject-hash"] = line.split(": ", 1)[1].strip()
        elif line.startswith("# extras: "):
            header["extras"] = line.split(": ", 1)[1].strip()
        elif line and not line.startswith((" ", "#", "-")):
            m = _PIN.match(line)
            if m is None:
                raise ValueError(f"{path}: cannot read the line {line!r}")
            pins.append((_canon(m.group(1)), m.group(2), m.group(3)))
    return header, pins


def _requirement_texts(extras: list[str], proj: dict) -> list[str]:
    """The requirement strings of the package with these extras, self-references (mmsafe[hf]) expanded.
    Reads names and extras with a regex, so it runs where ``packaging`` is not installed (bare venvs)."""
    me = _canon(proj["name"])
    out: list[str] = []
    seen: set[str | None] = set()
    todo: list[str | None] = [None, *extras]
    while todo:
        extra = todo.pop()
        if extra in seen:
            continue
        seen.add(extra)
        for text in proj["dependencies"] if extra is None else proj["optional-dependencies"][extra]:
            m = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:\[([^\]]*)\])?", text)
            if m is None:
                raise ValueError(f"cannot read the requirement {text!r}")
            if _canon(m.group(1)) == me:
                todo.extend(x.strip() for x in (m.group(2) or "").split(",") if x.strip())
            else:
                out.append(text)
    return out


def requirements_of(extras: list[str], proj: dict | None = None) -> list:
    """Every requirement (``packaging`` Requirement) of the package with these extras."""
    from packaging.requirements import Requirement

    return [Requirement(t) for t in _requirement_texts(extras, proj or pyproject())]


def requirement_names(extras: list[str], proj: dict | None = None) -> set[str]:
    """Canonical names of :func:`requirements_of` without needing ``packaging``."""
    names = (re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", t) for t in _requirement_texts(extras, proj or pyproject()))
    return {_canon(m.group(1)) for m in names if m}


def check_lock(path: Path, *, pyproject_path: Path = REPO / "pyproject.toml") -> list[str]:
    """What is wrong with one lock file (empty when it agrees with pyproject.toml)."""
    from packaging.markers import Marker
    from packaging.version import Version

    problems = []
    header, pins = read_lock(path)
    expected_hash = pyproject_hash(pyproject_path)
    if header.get("pyproject-hash") != expected_hash:
        problems.append(
            f"{path.name}: written for another pyproject.toml (hash {header.get('pyproject-hash')} != "
            f"{expected_hash}): run `bash scripts/lock.sh`"
        )
    extras_field = header.get("extras", "")
    extras = [] if extras_field in ("", "(none)") else extras_field.split()
    by_name: dict[str, list[tuple[str, str | None]]] = {}
    for name, version, marker in pins:
        by_name.setdefault(name, []).append((version, marker))
    for name in NOT_LOCKED:
        if name in by_name:
            problems.append(f"{path.name}: pins {name}, which is installed first and never locked")
    for req in requirements_of(extras, pyproject(pyproject_path)):
        name = _canon(req.name)
        if name in NOT_LOCKED or (req.marker is not None and not req.marker.evaluate()):
            continue
        live = [v for v, m in by_name.get(name, []) if m is None or Marker(m).evaluate()]
        if not live:
            problems.append(f"{path.name}: {req} is required but not pinned: run `bash scripts/lock.sh`")
        for version in live:
            if not req.specifier.contains(Version(version), prereleases=True):
                problems.append(f"{path.name}: pins {name}=={version}, outside pyproject's {req}")
    return problems


def check_all(lock_dir: Path = LOCK_DIR, *, pyproject_path: Path = REPO / "pyproject.toml") -> list[str]:
    files = sorted(lock_dir.glob("*.txt"))
    if not files:
        return [f"no lock files in {lock_dir}: run `bash scripts/lock.sh`"]
    return [p for f in files for p in check_lock(f, pyproject_path=pyproject_path)]


def compare_installed(path: Path) -> list[tuple[str, str, str]]:
    """(name, locked version, installed version) for every lock pin the running environment differs from."""
    from importlib.metadata import PackageNotFoundError, version

    from packaging.markers import Marker

    out = []
    for name, locked, marker in read_lock(path)[1]:
        if marker is not None and not Marker(marker).evaluate():
            continue
        try:
            have = version(name)
        except PackageNotFoundError:
            have = "(absent)"
        if have != locked:
            out.append((name, locked, have))
    return out


def only_via(path: Path, excluded: set[str]) -> set[str]:
    """Packages of a lock file that are there only because an excluded package needs them (transitively)."""
    via: dict[str, set[str]] = {}
    current = None
    for line in path.read_text(encoding="utf-8").splitlines():
        m = _PIN.match(line) if line and not line.startswith((" ", "#", "-")) else None
        if m:
            current = _canon(m.group(1))
            via.setdefault(current, set())
            continue
        text = line.strip()
        if current and text.startswith("#") and text not in ("# via", "#"):
            text = text.removeprefix("# via").strip().lstrip("#").strip()
            if text and not text.startswith("-c ") and not text.startswith("-r "):
                via[current].add(_canon(text.split()[0]))
    excluded = {_canon(e) for e in excluded}
    found: set[str] = set()
    changed = True
    while changed:
        changed = False
        for name, parents in via.items():
            if name not in found and name not in excluded and parents and parents <= excluded | found:
                found.add(name)
                changed = True
    return found


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pyproject-hash", action="store_true", help="print the hash lock files carry")
    ap.add_argument("--compare-installed", metavar="LOCK", help="list installed versions that differ from LOCK")
    ap.add_argument("--only-via", nargs="+", metavar=("LOCK", "PKG"),
                    help="print the packages of LOCK needed only by the given (excluded) packages")
    args = ap.parse_args(argv)
    if args.only_via:
        print(" ".join(sorted(only_via(Path(args.only_via[0]), set(args.only_via[1:])))))
        return 0
    if args.pyproject_hash:
        print(pyproject_hash())
        return 0
    if args.compare_installed:
        diff = compare_installed(Path(args.compare_installed))
        print(f"{len(diff)} installed version(s) differ from {args.compare_installed}")
        for name, locked, have in diff:
            print(f"  {name:32s} lock {locked:16s} installed {have}")
        return 0
    problems = check_all()
    for p in problems:
        print(p, file=sys.stderr)
    print("lock agrees with pyproject.toml" if not problems else f"{len(problems)} problem(s)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
