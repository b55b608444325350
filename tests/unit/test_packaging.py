"""The package installs with what it needs: pyproject declares compatible ranges, requirements.txt the exact lock.

Every third-party package the library imports is a declared dependency, every declared range admits
the version pinned in requirements.txt, and the wheel carries the whole library and the
``quant-engine`` command.
"""

from __future__ import annotations

import ast
import importlib.metadata
import importlib.util
import os
import shutil
import subprocess
import sys
import sysconfig
import tomllib
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name

REPO_ROOT = Path(__file__).resolve().parents[2]
LIBRARY = REPO_ROOT / "include" / "quant_engine"
PROJECT = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
DEPENDENCIES = [Requirement(r) for r in PROJECT["dependencies"]]
EXTRAS = {name: [Requirement(r) for r in reqs] for name, reqs in PROJECT["optional-dependencies"].items()}


def pinned() -> dict[str, str]:
    """``requirements.txt`` as ``{canonical name: version}``; every line must pin one exact version."""
    pins = {}
    for line in (REPO_ROOT / "requirements.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            requirement = Requirement(line)
            (spec,) = requirement.specifier
            assert spec.operator == "==", f"requirements.txt must pin exact versions: {line}"
            pins[canonicalize_name(requirement.name)] = spec.version
    return pins


def imported_modules() -> dict[str, set[str]]:
    """Third-party modules the library imports anywhere (lazily too) -> the files importing them."""
    found: dict[str, set[str]] = {}
    for path in LIBRARY.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.partition(".")[0]
                if top not in sys.stdlib_module_names and top != "quant_engine":
                    found.setdefault(name, set()).add(str(path.relative_to(REPO_ROOT)))
    return found


def distribution_of(module: str) -> str:
    """The installed distribution that provides ``module`` (one of several for a namespace like ``google``)."""
    candidates = sorted(set(importlib.metadata.packages_distributions().get(module.partition(".")[0], [])))
    assert candidates, f"no installed distribution provides {module}"
    if len(candidates) == 1:
        return canonicalize_name(candidates[0])
    origin = Path(importlib.util.find_spec(module).origin).resolve()
    for name in candidates:
        if any(Path(f.locate()).resolve() == origin for f in importlib.metadata.distribution(name).files or ()):
            return canonicalize_name(name)
    raise AssertionError(f"none of {candidates} holds {origin}")


def test_every_package_the_library_imports_is_a_declared_dependency() -> None:
    declared = {canonicalize_name(r.name) for r in DEPENDENCIES}
    missing = {
        module: sorted(files) for module, files in imported_modules().items() if distribution_of(module) not in declared
    }
    assert not missing, f"imported by the library but not in pyproject's dependencies: {missing}"


def test_nothing_is_declared_that_the_library_does_not_import() -> None:
    used = {distribution_of(module) for module in imported_modules()}
    assert {canonicalize_name(r.name) for r in DEPENDENCIES} <= used


@pytest.mark.parametrize(
    "requirement",
    [*DEPENDENCIES, *(r for reqs in EXTRAS.values() for r in reqs)],
    ids=str,
)
def test_each_range_is_compatible_and_admits_the_pinned_version(requirement: Requirement) -> None:
    pins = pinned()
    name = canonicalize_name(requirement.name)
    assert name in pins, f"{requirement} is not pinned in requirements.txt"
    assert requirement.specifier.contains(pins[name]), f"{requirement} refuses the pinned {name}=={pins[name]}"
    operators = {spec.operator for spec in requirement.specifier}
    assert operators in ({"~="}, {">=", "<"}), f"{requirement} is not a compatible range (~= or >=x,<next)"


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The project's wheel, built from a copy of the checkout (its egg-info and build/ stay out of it)."""
    tmp_path = tmp_path_factory.mktemp("wheel")
    source = tmp_path / "source"
    source.mkdir()
    shutil.copy(REPO_ROOT / "pyproject.toml", source)
    shutil.copy(REPO_ROOT / "README.md", source)
    shutil.copytree(LIBRARY, source / "include" / "quant_engine", ignore=shutil.ignore_patterns("__pycache__"))
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q",
         "-w", str(tmp_path / "dist"), str(source)],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert built.returncode == 0, built.stdout + built.stderr
    (path,) = (tmp_path / "dist").glob("quant_engine-*.whl")
    return path


def test_the_wheel_holds_the_library_its_metadata_and_the_command(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        (info,) = {n.split("/")[0] for n in names if n.split("/")[0].endswith(".dist-info")}
        metadata = Parser().parsestr(archive.read(f"{info}/METADATA").decode())
        entry_points = archive.read(f"{info}/entry_points.txt").decode()

    library = {str(p.relative_to(LIBRARY.parent)) for p in LIBRARY.rglob("*.py") if "__pycache__" not in p.parts}
    assert library <= names, f"missing from the wheel: {sorted(library - names)}"
    assert "quant_engine/py.typed" in names
    assert (metadata["Name"], metadata["Version"]) == ("quant-engine", PROJECT["version"])
    assert SpecifierSet(metadata["Requires-Python"]) == SpecifierSet(PROJECT["requires-python"])
    requires = {str(Requirement(r)) for r in metadata.get_all("Requires-Dist")}
    assert {str(r) for r in DEPENDENCIES} <= requires
    for extra, reqs in EXTRAS.items():
        assert extra in metadata.get_all("Provides-Extra")
        for r in reqs:
            assert str(Requirement(f'{r}; extra == "{extra}"')) in requires
    assert "[console_scripts]\nquant-engine = quant_engine.cli:main" in entry_points


def test_the_wheel_installs_into_a_fresh_venv_and_its_command_works(wheel: Path, tmp_path: Path) -> None:
    """``pip install`` of the wheel into a fresh Python 3.11 venv gives a working ``quant-engine``.

    Downloading the whole dependency tree would take minutes, so the fresh venv sees the locked
    dependencies (this environment's installed ``requirements.txt``, which the ranges are tested to
    admit) through one path entry to a copy-by-symlink of its site-packages *without* the project:
    no ``quant_engine``, no editable-install or checkout ``.pth``. The command that runs is the
    wheel's, importing the wheel's files, from a folder outside the checkout with no PYTHONPATH.
    What this does not prove: that pip resolves the declared ranges from an index (``pip install
    --dry-run --ignore-installed --report out.json .`` does, in minutes; see the README).
    """
    fresh = tmp_path / "fresh"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(fresh)], check=True, timeout=120)
    python = fresh / "bin" / "python"
    installed = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index", "-q", str(wheel)],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert installed.returncode == 0, installed.stdout + installed.stderr
    fresh_site = Path(
        subprocess.run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            capture_output=True, text=True, check=True, timeout=60,
        ).stdout.strip()
    )  # fmt: skip

    lock = tmp_path / "lock-site-packages"  # the locked dependencies, the project left out
    lock.mkdir()
    for entry in Path(sysconfig.get_paths()["purelib"]).iterdir():
        if not entry.name.startswith(("quant_engine", "__editable__")) and entry.suffix != ".pth":
            (lock / entry.name).symlink_to(entry)
    (fresh_site / "locked_dependencies.pth").write_text(f"{lock}\n")

    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH" and not k.startswith("QE_")}
    env["QE_HOME"] = str(tmp_path / "home")

    def run(*argv: str) -> str:
        result = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300, check=False)
        assert result.returncode == 0, f"{argv} failed:\n{result.stdout}{result.stderr}"
        return result.stdout

    origin = run(str(python), "-c", "import quant_engine.cli, quant_engine.bridge.service as s; print(s.__file__)")
    assert Path(origin.strip()).is_relative_to(fresh_site), f"imported {origin.strip()}, not the installed wheel"
    command = str(fresh / "bin" / "quant-engine")
    assert "quickstart" in run(command, "--help")
    run(command, "data", "synth", "--tickers", "2", "--start", "2024-01-02", "--end", "2024-03-28", "--out", "b.csv")
    assert "b.csv: 122 rows, no problems" in run(command, "data", "validate", "b.csv")
