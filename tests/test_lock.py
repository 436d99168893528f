"""The lock (constraints.txt, used by `make setup`) and pyproject.toml agree.

pyproject.toml keeps version ranges for installing the library elsewhere; the lock pins the one
resolution `make setup` installs. Editing one side only must fail here: every dependency of the
project and of its ``test`` and ``lmeval`` extras is locked, at a version inside pyproject's range,
and every lock line is an exact ``name==version`` pin.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
LOCK = ROOT / "constraints.txt"
PYPROJECT = ROOT / "pyproject.toml"
EXTRAS = ("test", "lmeval")


def parse_lock(text: str) -> dict[str, Version]:
    """Lock lines as {canonical name: version}; blank lines and ``#`` comments are skipped.

    Raises ValueError for a line that is not an exact ``name==version`` pin (no ranges, markers,
    extras, URLs or options) and for a name pinned twice."""
    pins: dict[str, Version] = {}
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        req = Requirement(line)  # raises InvalidRequirement on options such as `-e .` or `--index-url`
        specs = list(req.specifier)
        if req.url or req.marker or req.extras or len(specs) != 1 or specs[0].operator != "==" or "*" in specs[0].version:
            raise ValueError(f"constraints.txt line {lineno} is not an exact name==version pin: {raw!r}")
        name = canonicalize_name(req.name)
        if name in pins:
            raise ValueError(f"constraints.txt line {lineno} pins {req.name} a second time")
        pins[name] = Version(specs[0].version)
    return pins


def project_requirements(pyproject: dict) -> list[Requirement]:
    """The project's dependencies and those of its ``test`` and ``lmeval`` extras."""
    project = pyproject["project"]
    lines = list(project["dependencies"])
    for extra in EXTRAS:
        lines += project["optional-dependencies"][extra]
    return [Requirement(line) for line in lines]


def mismatches(lock_text: str, pyproject_text: str) -> list[str]:
    """Every disagreement between the lock and pyproject.toml, one sentence each (empty: agree)."""
    pins = parse_lock(lock_text)
    problems = []
    for req in project_requirements(tomllib.loads(pyproject_text)):
        if req.marker is not None and not req.marker.evaluate({"extra": ""}):
            continue  # not installed on this platform/Python
        name = canonicalize_name(req.name)
        if name not in pins:
            problems.append(f"{req} is not in constraints.txt")
        elif not req.specifier.contains(pins[name], prereleases=True):
            problems.append(f"constraints.txt pins {name}=={pins[name]}, outside pyproject's {req}")
    return problems


def test_lock_is_exact_pins():
    pins = parse_lock(LOCK.read_text())
    assert "torch" in pins and pins["torch"].local == "cpu", "torch must be locked to its CPU build (+cpu)"


def test_lock_matches_pyproject():
    assert mismatches(LOCK.read_text(), PYPROJECT.read_text()) == []


# The same checks on one-sided edits of the real files: each must be caught.


def _edit(text: str, pattern: str, repl: str) -> str:
    new, n = re.subn(pattern, repl, text, count=1, flags=re.MULTILINE)
    assert n == 1, pattern
    return new


def test_pyproject_range_tightened_alone_is_caught():
    pyproject = _edit(PYPROJECT.read_text(), r'"transformers>=[^"]*"', '"transformers>=99"')
    assert any("transformers" in p for p in mismatches(LOCK.read_text(), pyproject))


def test_lock_version_changed_alone_is_caught():
    lock = _edit(LOCK.read_text(), r"^transformers==.*$", "transformers==5.40.0")
    assert any("transformers" in p for p in mismatches(lock, PYPROJECT.read_text()))


def test_new_dependency_not_locked_is_caught():
    pyproject = _edit(PYPROJECT.read_text(), r'^  "tqdm', '  "not-a-locked-package>=1",\n  "tqdm')
    assert any("not-a-locked-package" in p for p in mismatches(LOCK.read_text(), pyproject))


def test_extra_dependency_dropped_from_lock_is_caught():
    lock = _edit(LOCK.read_text(), r"^hypothesis==.*\n", "")
    assert any("hypothesis" in p for p in mismatches(lock, PYPROJECT.read_text()))


@pytest.mark.parametrize("line", ["numpy>=2", "numpy", "numpy==2.*", "-e .", "numpy==2.4.6; python_version<'3'"])
def test_non_exact_lock_line_is_rejected(line):
    with pytest.raises(Exception):
        parse_lock(f"# header\n{line}\n")
