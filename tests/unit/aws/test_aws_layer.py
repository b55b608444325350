"""Every boto3 / botocore / SageMaker SDK import of the library lives in ``quant_engine.aws``."""

from __future__ import annotations

import ast
from pathlib import Path

import quant_engine

PACKAGE = Path(quant_engine.__file__).parent
AWS_SDKS = ("boto3", "botocore", "sagemaker", "aiobotocore", "s3transfer")


def _imported_modules(tree: ast.AST) -> list[tuple[int, str]]:
    """Every module an ``import`` or ``from ... import`` names, at any depth (functions included)."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
    return found


def _sdk_imports_outside_aws() -> list[str]:
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE.parent)
        if relative.parts[1] == "aws":
            continue
        for line, module in _imported_modules(ast.parse(path.read_text(), str(path))):
            if module.split(".")[0] in AWS_SDKS:
                offenders.append(f"{relative}:{line} imports {module}")
    return offenders


def test_no_module_outside_quant_engine_aws_imports_an_aws_sdk() -> None:
    offenders = _sdk_imports_outside_aws()
    assert not offenders, "AWS SDK imports outside quant_engine/aws/: " + "; ".join(offenders)


def test_the_walk_sees_imports_inside_functions(tmp_path: Path) -> None:
    tree = ast.parse("def f():\n    from botocore.config import Config\n    import boto3.session\n")
    assert [m for _, m in _imported_modules(tree)] == ["botocore.config", "boto3.session"]


def test_the_aws_package_is_where_the_sdks_are_imported() -> None:
    """The walk is not vacuous: the aws package itself does import them."""
    aws_imports = {
        module.split(".")[0]
        for path in (PACKAGE / "aws").rglob("*.py")
        for _, module in _imported_modules(ast.parse(path.read_text()))
    }
    assert {"boto3", "botocore", "sagemaker"} <= aws_imports
