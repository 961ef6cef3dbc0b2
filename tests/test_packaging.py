"""One list of what a fresh machine needs: requirements.txt (what `make install` installs after torch) agrees
with pyproject.toml, and provides every third-party module that tests/ and bench/ import.

A test file importing a package that `make install` does not install stops `make test` at collection on a
new machine, while passing wherever someone installed it by hand; these tests catch that without a new
machine.
"""
import ast
import re
import sys
from importlib.metadata import PackageNotFoundError, packages_distributions, requires
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib", reason="tomllib is in the standard library from Python 3.11")

ROOT = Path(__file__).resolve().parent.parent
# Extras that are deliberately not part of `make install`: llama-cpp-python compiles llama.cpp (an hour on 2 cores).
# A test-only package that cannot be installed everywhere belongs here, its tests skipped (with a reason) without it.
OPTIONAL_EXTRAS = {"llama-cpp"}
# Installed with torch or by the build (torch itself comes first, from the CPU wheel; setuptools with it).
PROVIDED = {"torch", "setuptools"}


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~\[; @]", requirement.strip(), maxsplit=1)[0].lower().replace("_", "-")


def _requirements() -> set[str]:
    lines = (ROOT / "requirements.txt").read_text().splitlines()
    return {_name(line) for line in lines if line.strip() and not line.lstrip().startswith("#")}


def _with_dependencies(names: set[str]) -> set[str]:
    """`names` and everything they require (without extras), as far as the installed metadata tells."""
    todo, seen = list(names), set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        try:
            todo += [_name(r) for r in requires(name) or [] if "extra ==" not in r]
        except PackageNotFoundError:
            pass
    return seen


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_requirements_are_the_dependencies_extras_and_build_requirements():
    meta = _pyproject()
    project = meta["project"]
    extras = project["optional-dependencies"]
    wanted = {_name(r) for r in project["dependencies"]}
    wanted |= {_name(r) for group, reqs in extras.items() if group not in OPTIONAL_EXTRAS for r in reqs}
    wanted |= {_name(r) for r in meta["build-system"]["requires"]}
    assert _requirements() == wanted - PROVIDED, (
        f"requirements.txt and pyproject.toml disagree: only in requirements.txt "
        f"{sorted(_requirements() - wanted)}, only in pyproject.toml {sorted(wanted - PROVIDED - _requirements())}")


def test_the_test_extra_covers_what_the_tests_import():
    test_extra = {_name(r) for r in _pyproject()["project"]["optional-dependencies"]["test"]}
    dependencies = {_name(r) for r in _pyproject()["project"]["dependencies"]}
    have = _with_dependencies(test_extra | dependencies)
    missing = {m: d for m, d in _third_party_imports(ROOT / "tests").items() if not d & have}
    assert not missing, f"tests import packages that pyproject's `test` extra does not list: {missing}"


def _third_party_imports(folder: Path) -> dict[str, set[str]]:
    """Top-level modules imported at module level (or in a module-level try) by the .py files of `folder`,
    outside the standard library and the repository -> the distributions that provide them."""
    local = {p.stem for d in ("tests", "bench", "tools") for p in (ROOT / d).glob("*.py")}
    local |= {"fastsample", "bench", "tests", "tools"}
    provided_by = packages_distributions()
    found: dict[str, set[str]] = {}
    for path in folder.glob("*.py"):
        tree = ast.parse(path.read_text())
        nodes = [n for top in tree.body for n in ([top, *top.body] if isinstance(top, ast.Try) else [top])]
        for node in nodes:
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top in sys.stdlib_module_names or top in local:
                    continue
                dists = {d.lower().replace("_", "-") for d in provided_by.get(top, [top])}
                found[top] = dists
    return found


@pytest.mark.parametrize("folder", ["tests", "bench"])
def test_make_install_provides_every_module_level_import(folder):
    have = _with_dependencies(_requirements() | PROVIDED)
    missing = {m: sorted(d) for m, d in _third_party_imports(ROOT / folder).items() if not d & have}
    assert not missing, f"{folder}/ imports at module level what requirements.txt does not install: {missing}"
