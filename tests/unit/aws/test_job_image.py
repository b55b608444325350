"""The SageMaker job image: its Dockerfile agrees with the repository, and jobs refuse images without Python 3.11.

No Docker engine runs here, so the Dockerfile is read as text: its base, every package it installs
(pinned as in requirements.txt, and together with their dependencies covering what the job entry
points import), the package install, the commands SageMaker runs and what the build context lets
through. ``tests/integration/test_job_entrypoints.py`` runs those commands on a simulated ``/opt/ml``
with only the image's packages importable, which shows the installed packages are enough.
"""

from __future__ import annotations

import doctest
import fnmatch
import importlib.metadata
import importlib.util
import os
import re
import shlex
from pathlib import Path

import pytest
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from quant_engine.aws import images
from quant_engine.aws.images import (
    REQUIRED_PYTHON,
    XGBOOST_FRAMEWORK_PYTHON,
    JobImageError,
    check_job_image,
    framework_python,
    job_image_uri,
)
from quant_engine.aws.processing import ENTRY_POINT
from quant_engine.aws.trainer_entry import sagemaker_layout
from quant_engine.config import Settings, SettingsError
from quant_engine.wfo import processing_entry

REPO_ROOT = Path(__file__).resolve().parents[3]
DOCKERFILE = REPO_ROOT / "docker" / "sagemaker" / "Dockerfile"
JOB_IMAGE = "123456789012.dkr.ecr.eu-west-1.amazonaws.com/quant-engine-job:0.1.0"
SECRET_NAMES = re.compile(r"(SECRET|PASSWORD|TOKEN|ACCESS_KEY|CREDENTIAL)", re.IGNORECASE)


def instructions() -> list[tuple[str, str]]:
    """The Dockerfile as ``(INSTRUCTION, arguments)``, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    parsed = []
    for line in text.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            keyword, _, rest = line.strip().partition(" ")
            parsed.append((keyword.upper(), " ".join(rest.split())))
    return parsed


def pip_installs() -> list[list[str]]:
    """The arguments of each ``pip install`` in a RUN."""
    installs = []
    for keyword, rest in instructions():
        if keyword == "RUN":
            for command in re.split(r"&&|;", rest):
                words = shlex.split(command)
                if words[:2] == ["pip", "install"]:
                    installs.append(words[2:])
    return installs


def pinned() -> dict[str, str]:
    pins = {}
    for line in (REPO_ROOT / "requirements.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            requirement = Requirement(line)
            pins[canonicalize_name(requirement.name)] = next(iter(requirement.specifier)).version
    return pins


def image_requirements() -> list[Requirement]:
    """The ``name==version`` arguments of the Dockerfile's pip installs."""
    return [Requirement(arg) for args in pip_installs() for arg in args if "==" in arg]


def dependency_closure(names: set[str]) -> set[str]:
    """``names`` and everything they require (no extras), from the installed metadata."""
    environment = {**default_environment(), "extra": ""}  # this machine is Linux x86_64, Python 3.11, as the image
    seen, todo = set(), [canonicalize_name(n) for n in names]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        for line in importlib.metadata.requires(name) or []:
            requirement = Requirement(line)
            if requirement.marker is None or requirement.marker.evaluate(environment):
                todo.append(canonicalize_name(requirement.name))
    return seen


# --- (a) the Dockerfile agrees with the repository ------------------------------------------------


def test_the_base_is_python_311_slim_and_the_only_stage() -> None:
    froms = [rest for keyword, rest in instructions() if keyword == "FROM"]
    assert froms == [f"python:{REQUIRED_PYTHON}-slim"]


def test_every_package_it_installs_is_pinned_as_in_requirements_txt() -> None:
    pins = pinned()
    requirements = image_requirements()
    assert requirements, "the Dockerfile installs no pinned package"
    for requirement in requirements:
        name = canonicalize_name(requirement.name)
        assert name in pins, f"the job image installs {requirement}, which requirements.txt does not pin"
        assert str(requirement.specifier) == f"=={pins[name]}", f"{requirement} but requirements.txt pins {pins[name]}"
    # -c requirements.txt pins their dependencies too: all of them must be in it
    assert any(args[:2] == ["-c", "requirements.txt"] for args in pip_installs())
    unpinned = dependency_closure({r.name for r in requirements}) - set(pins)
    assert not unpinned, f"dependencies of the job image's packages that requirements.txt leaves floating: {unpinned}"


def test_the_package_is_installed_from_the_copied_sources() -> None:
    steps = instructions()
    copies = [rest for keyword, rest in steps if keyword == "COPY"]
    assert "pyproject.toml README.md ./" in copies and "include ./include" in copies
    package_install = ["--no-deps", "--no-build-isolation", "."]
    assert package_install in pip_installs(), "the package itself is not installed"
    # the package is installed after its sources are copied
    run_index = next(i for i, (k, rest) in enumerate(steps) if k == "RUN" and rest.endswith("--no-build-isolation ."))
    copy_index = next(i for i, (k, rest) in enumerate(steps) if k == "COPY" and rest == "include ./include")
    assert copy_index < run_index


def test_the_commands_sagemaker_runs_exist() -> None:
    copies = {rest.split()[-1]: rest.split()[-2] for keyword, rest in instructions() if keyword == "COPY"}
    # training: `docker run <image> train`, so a `train` executable on PATH
    train = REPO_ROOT / copies["/usr/local/bin/train"]
    assert train.is_file() and os.access(train, os.X_OK)
    lines = train.read_text().splitlines()
    assert lines[0] == "#!/bin/sh"
    (command,) = [line for line in lines if line.startswith("exec ")]
    python, flag, module, *rest = shlex.split(command)[1:]
    assert (python, flag, rest) == ("python3", "-m", ['"$@"'] if rest and rest[0] == '"$@"' else ["$@"])
    assert importlib.util.find_spec(module) is not None, f"{train} runs {module}, which does not exist"
    # processing: the job request's ContainerEntrypoint, run by the image's python3
    assert ENTRY_POINT[:2] == ("python3", "-m") and importlib.util.find_spec(ENTRY_POINT[2]) is not None


def test_the_build_context_lets_through_everything_it_copies() -> None:
    ignored = [p for p in (REPO_ROOT / ".dockerignore").read_text().split() if not p.startswith("#")]
    for keyword, rest in instructions():
        if keyword != "COPY":
            continue
        for source in [w for w in rest.split() if not w.startswith("--")][:-1]:
            assert (REPO_ROOT / source).exists(), f"COPY {source}: no such file in the repository"
            blocked = [p for p in ignored if fnmatch.fnmatch(source, p) or source.startswith(p.rstrip("/") + "/")]
            assert not blocked, f"COPY {source}, but .dockerignore excludes it ({blocked})"


def test_hadolint_like_sanity() -> None:
    steps = instructions()
    keywords = [k for k, _ in steps]
    assert "ADD" not in keywords, "COPY, not ADD (DL3020)"
    assert not any("latest" in rest for k, rest in steps if k == "FROM"), "a pinned base tag (DL3007)"
    runs = [rest for k, rest in steps if k == "RUN"]
    assert not any(re.search(r"\bsudo\b|\bcd\b", rest) for rest in runs), "no sudo, no cd (DL3004, DL3003)"
    env = " ".join(rest for k, rest in steps if k == "ENV")
    assert "PIP_NO_CACHE_DIR=1" in env, "pip keeps no cache in the image (DL3042)"
    for args in pip_installs():  # every package pinned (DL3013): a name==version or the local package
        packages = [a for i, a in enumerate(args) if not a.startswith("-") and args[i - 1] not in ("-c", "-r")]
        assert all("==" in a or a == "." for a in packages), f"unpinned pip install {args}"
    for name in re.findall(r"\b([A-Za-z_][A-Za-z0-9_]*)=", env):
        assert not SECRET_NAMES.search(name), f"the job image sets {name}: secrets come from the job's role"
    assert keywords[0] == "FROM" and keywords[-1] == "WORKDIR"


# --- (c) the framework-image check ----------------------------------------------------------------


@pytest.mark.parametrize("version", sorted(XGBOOST_FRAMEWORK_PYTHON))
def test_a_framework_image_whose_python_is_not_311_is_refused_with_the_fix(version: str) -> None:
    image = f"683313688378.dkr.ecr.us-east-1.amazonaws.com/sagemaker-xgboost:{version}"
    python = XGBOOST_FRAMEWORK_PYTHON[version]
    assert python != REQUIRED_PYTHON  # none of the published ones is 3.11: what this whole check is about
    with pytest.raises(JobImageError) as raised:
        check_job_image(image)
    message = str(raised.value)
    assert image in message and f"Python {python}" in message and "QE_SAGEMAKER_IMAGE_URI" in message


def test_a_framework_image_of_unknown_python_is_refused_too() -> None:
    """3.2-0, the default framework version: no published Dockerfile says its Python."""
    image = "141502667606.dkr.ecr.eu-west-1.amazonaws.com/sagemaker-xgboost:3.2-0"
    assert framework_python(image) == ("3.2-0", None)
    with pytest.raises(JobImageError, match=r"3\.2-0 .* does not know.*docker/sagemaker/Dockerfile"):
        check_job_image(image)


def test_a_framework_image_on_311_would_be_accepted(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(XGBOOST_FRAMEWORK_PYTHON, "9.9-1", REQUIRED_PYTHON)
    image = "683313688378.dkr.ecr.us-east-1.amazonaws.com/sagemaker-xgboost:9.9-1"
    assert check_job_image(image) == image


@pytest.mark.parametrize("image", [JOB_IMAGE, "my/image:1", "quant-engine-job@sha256:" + "a" * 64])
def test_the_custom_image_is_accepted(image: str) -> None:
    assert framework_python(image) is None and check_job_image(image) == image


@pytest.mark.parametrize("image", ["", " ", "my image:1"])
def test_a_blank_or_spaced_image_is_refused(image: str) -> None:
    with pytest.raises(JobImageError, match="not an image reference"):
        check_job_image(image)


def test_job_image_uri_prefers_the_jobs_override_then_the_setting_then_a_checked_framework_image() -> None:
    settings = Settings(backend="aws", s3_bucket="b", aws_region="eu-west-1", sagemaker_image_uri=JOB_IMAGE)
    kind = {"framework": "xgboost", "framework_version": "3.2-0", "instance_type": "ml.m5.xlarge"}
    assert job_image_uri(settings, None, **kind) == JOB_IMAGE
    assert job_image_uri(settings, "other/image:2", **kind) == "other/image:2"
    unset = Settings(backend="aws", s3_bucket="b", aws_region="eu-west-1")
    with pytest.raises(JobImageError, match="141502667606.dkr.ecr.eu-west-1.amazonaws.com/sagemaker-xgboost:3.2-0"):
        job_image_uri(unset, None, **kind)
    with pytest.raises(JobImageError, match="Python 3.10"):
        job_image_uri(unset, None, **{**kind, "framework_version": "3.0-5"})
    # a per-job override naming a framework image is checked as well
    with pytest.raises(JobImageError, match="Python 3.8"):
        job_image_uri(settings, "683313688378.dkr.ecr.us-east-1.amazonaws.com/sagemaker-xgboost:1.7-1", **kind)


def test_the_setting_comes_from_qe_sagemaker_image_uri() -> None:
    env = {"QE_BACKEND": "aws", "QE_S3_BUCKET": "b", "QE_SAGEMAKER_IMAGE_URI": JOB_IMAGE}
    assert Settings.from_env(env).sagemaker_image_uri == JOB_IMAGE
    assert Settings.from_env({"QE_BACKEND": "aws", "QE_S3_BUCKET": "b"}).sagemaker_image_uri is None
    with pytest.raises(SettingsError, match="QE_SAGEMAKER_IMAGE_URI='my image' is not an image reference"):
        Settings(sagemaker_image_uri="my image")


def test_the_examples_in_the_docstrings_hold() -> None:
    assert doctest.testmod(images).failed == 0
    assert doctest.testmod(processing_entry).failed == 0


# --- the entry points read SageMaker's layout where no variable says otherwise ---------------------


def test_the_trainer_reads_the_layout_under_sagemaker_base_dir(tmp_path: Path) -> None:
    for channel in ("train", "validation"):
        (tmp_path / "input" / "data" / channel).mkdir(parents=True)
    env = sagemaker_layout({"SAGEMAKER_BASE_DIR": str(tmp_path)})
    assert env["SM_CHANNEL_TRAIN"] == str(tmp_path / "input" / "data" / "train")
    assert env["SM_CHANNEL_VALIDATION"] == str(tmp_path / "input" / "data" / "validation")
    assert env["SM_MODEL_DIR"] == str(tmp_path / "model")
    assert env["QE_HYPERPARAMETERS_FILE"] == str(tmp_path / "input" / "config" / "hyperparameters.json")
    assert env["QE_CHECKPOINT_DIR"] == str(tmp_path / "checkpoints")


def test_set_variables_win_over_the_layout_and_no_layout_adds_nothing(tmp_path: Path) -> None:
    (tmp_path / "input" / "data" / "train").mkdir(parents=True)
    toolkit = {"SAGEMAKER_BASE_DIR": str(tmp_path), "SM_CHANNEL_TRAIN": "/elsewhere", "SM_MODEL_DIR": "/m"}
    env = sagemaker_layout(toolkit)
    assert (env["SM_CHANNEL_TRAIN"], env["SM_MODEL_DIR"]) == ("/elsewhere", "/m")
    # outside SageMaker (no layout root) a missing channel stays missing, so the trainer says so
    assert sagemaker_layout({"SAGEMAKER_BASE_DIR": str(tmp_path / "absent")}) == {
        "SAGEMAKER_BASE_DIR": str(tmp_path / "absent")
    }
