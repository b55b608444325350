"""The IAM policies in ``deploy/iam``: valid JSON, IAM's grammar, and every AWS call the code makes allowed.

The operations are not listed by hand: the test walks the modules each role runs (``ast``), takes
every method called on anything, and keeps the names that are operations of the services the
engine uses (botocore's own service models, offline), plus the paginators, waiters and S3
transfer helpers named. A new client call without its permission fails here, not in an account.
"""

from __future__ import annotations

import ast
import fnmatch
import functools
import json
import re
from pathlib import Path

import boto3
import pytest

import quant_engine

REPO = Path(__file__).resolve().parents[3]
IAM = REPO / "deploy" / "iam"
PACKAGE = Path(quant_engine.__file__).parent
#: boto3 service -> IAM service prefix.
SERVICES = {
    "s3": "s3",
    "dynamodb": "dynamodb",
    "cloudwatch": "cloudwatch",
    "sagemaker": "sagemaker",
    "sagemaker-featurestore-runtime": "sagemaker",
    "sagemaker-runtime": "sagemaker",
}
#: API operations whose IAM action has another name.
ACTION_NAMES = {("s3", "ListObjectsV2"): "ListBucket", ("s3", "HeadObject"): "GetObject"}
#: S3 transfer helpers -> the operations they call (multipart parts fall under the same actions).
TRANSFER = {"upload_file": ("s3", "put_object"), "download_file": ("s3", "get_object")}
#: Waiters -> the operation they poll.
WAITERS = {"table_exists": ("dynamodb", "describe_table")}
#: Who runs which code: Airflow's tasks run the aws layer (not the job entry point), the SageMaker
#: execution role the trainer's S3 checkpoints, the bridge its endpoint calls and the registry files.
ROLES = {
    "airflow": [
        "aws/s3.py",
        "aws/dynamodb.py",
        "aws/cloudwatch.py",
        "aws/sagemaker_spot.py",
        "aws/processing.py",
        "aws/feature_store.py",
        "aws/deployment.py",
    ],
    "sagemaker-execution": ["aws/trainer_entry.py", "aws/s3.py"],
    "bridge": ["bridge/*.py", "aws/s3.py"],
}
#: Placeholders docs/aws.md says to replace; nothing else may look like one.
PLACEHOLDERS = {"ACCOUNT_ID", "REGION", "QE_S3_BUCKET", "QE_S3_PREFIX", "QE_DYNAMODB_TABLE", "QE_SAGEMAKER_ENDPOINT"}


@functools.cache
def _operations() -> dict[str, dict[str, str]]:
    session = boto3.session.Session(region_name="us-east-1")
    return {service: session.client(service).meta.method_to_api_mapping for service in SERVICES}


def _calls(paths: list[Path]) -> set[tuple[str, str]]:
    """``(service, snake_case operation)`` of every AWS call in ``paths``."""
    operations = _operations()
    found: set[tuple[str, str]] = set()
    for path in paths:
        for node in ast.walk(ast.parse(path.read_text())):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
                continue
            name = node.func.attr
            if name in TRANSFER:
                found.add(TRANSFER[name])
            elif name in ("get_paginator", "get_waiter") and node.args and isinstance(node.args[0], ast.Constant):
                arg = node.args[0].value
                if name == "get_waiter":
                    found.add(WAITERS[arg])
                else:
                    found |= {(s, arg) for s, ops in operations.items() if arg in ops}
            else:
                owners = [s for s, ops in operations.items() if name in ops]
                assert len(owners) <= 1, f"{path.name}: {name}() is an operation of {owners}; say which in the test"
                found |= {(s, name) for s in owners}
    return found


def _action(service: str, operation: str) -> str:
    api = _operations()[service][operation]
    prefix = SERVICES[service]
    return f"{prefix}:{ACTION_NAMES.get((prefix, api), api)}"


def _policy(role: str) -> dict:
    return json.loads((IAM / f"{role}.json").read_text())


def _statements(policy: dict) -> list[dict]:
    statements = policy["Statement"]
    return statements if isinstance(statements, list) else [statements]


def _as_list(value: str | list[str]) -> list[str]:
    return [value] if isinstance(value, str) else list(value)


def _allowed(policy: dict, action: str) -> bool:
    def matches(statement: dict) -> bool:
        return any(fnmatch.fnmatchcase(action.lower(), a.lower()) for a in _as_list(statement["Action"]))

    statements = _statements(policy)
    return any(s["Effect"] == "Allow" and matches(s) for s in statements) and not any(
        s["Effect"] == "Deny" and matches(s) for s in statements
    )


def _role_files(role: str) -> list[Path]:
    return sorted(p for pattern in ROLES[role] for p in PACKAGE.glob(pattern))


def test_every_policy_file_is_iam_grammar() -> None:
    files = sorted(IAM.glob("*.json"))
    assert {p.stem for p in files} >= {*ROLES, "sagemaker-execution-trust"}
    for path in files:
        policy = json.loads(path.read_text())
        assert set(policy) <= {"Version", "Id", "Statement"}, f"{path.name}: unknown top-level keys"
        assert policy["Version"] == "2012-10-17", f"{path.name}: Version must be 2012-10-17"
        assert isinstance(policy["Statement"], list) and policy["Statement"], f"{path.name}: Statement must be a list"
        sids = [s.get("Sid") for s in policy["Statement"] if "Sid" in s]
        assert len(sids) == len(set(sids)), f"{path.name}: duplicate Sid"
        trust = path.stem.endswith("-trust")
        for statement in policy["Statement"]:
            where = f"{path.name} {statement.get('Sid', statement)}"
            assert statement["Effect"] in ("Allow", "Deny"), where
            assert "Action" in statement and "NotAction" not in statement, where
            if trust:
                assert "Principal" in statement and "Resource" not in statement, (
                    f"{where}: a trust policy names a Principal"
                )
            else:
                assert "Resource" in statement and "Principal" not in statement, f"{where}: needs Resource"
            for action in _as_list(statement["Action"]):
                assert re.fullmatch(r"[a-z0-9-]+:[A-Za-z0-9*]+", action), f"{where}: {action!r} is not service:Action"
                assert not action.endswith(":*"), f"{where}: {action} grants a whole service"
            for resource in _as_list(statement.get("Resource", [])):
                assert resource == "*" or resource.startswith("arn:aws:"), f"{where}: {resource!r} is not an ARN"
            if "Condition" in statement:
                assert isinstance(statement["Condition"], dict) and statement["Condition"], where
        placeholders = set(re.findall(r"\b[A-Z][A-Z0-9_]{3,}\b", path.read_text())) - {"Version"}
        assert placeholders <= PLACEHOLDERS, f"{path.name}: unknown placeholder(s) {placeholders - PLACEHOLDERS}"


@pytest.mark.parametrize("role", sorted(ROLES))
def test_every_call_the_role_makes_is_allowed(role: str) -> None:
    calls = _calls(_role_files(role))
    assert calls, f"no AWS call found for {role}: the walk is broken"
    policy = _policy(role)
    missing = sorted({_action(*call) for call in calls if not _allowed(policy, _action(*call))})
    assert not missing, f"deploy/iam/{role}.json does not allow {missing}"


def test_the_walk_finds_what_the_code_is_known_to_call() -> None:
    airflow = {_action(*c) for c in _calls(_role_files("airflow"))}
    assert {
        "s3:PutObject",
        "s3:ListBucket",
        "dynamodb:PutItem",
        "dynamodb:DescribeTable",
        "cloudwatch:PutMetricData",
        "sagemaker:CreateTrainingJob",
        "sagemaker:DescribeProcessingJob",
        "sagemaker:PutRecord",
    } <= airflow
    assert "sagemaker:InvokeEndpoint" in {_action(*c) for c in _calls(_role_files("bridge"))}


def test_airflow_may_pass_only_the_execution_role_and_only_to_sagemaker() -> None:
    passes = [s for s in _statements(_policy("airflow")) if "iam:PassRole" in _as_list(s["Action"])]
    assert len(passes) == 1 and _as_list(passes[0]["Action"]) == ["iam:PassRole"]
    assert _as_list(passes[0]["Resource"]) == ["arn:aws:iam::ACCOUNT_ID:role/quant-engine-sagemaker-execution"]
    assert passes[0]["Condition"] == {"StringEquals": {"iam:PassedToService": "sagemaker.amazonaws.com"}}
    trust = _statements(_policy("sagemaker-execution-trust"))
    assert trust[0]["Principal"] == {"Service": "sagemaker.amazonaws.com"} and trust[0]["Action"] == "sts:AssumeRole"


def test_no_role_may_do_what_it_never_needs() -> None:
    assert not _allowed(_policy("bridge"), "sagemaker:CreateTrainingJob")
    assert not _allowed(_policy("bridge"), "dynamodb:PutItem")
    assert not _allowed(_policy("sagemaker-execution"), "sagemaker:CreateTrainingJob")
    assert not _allowed(_policy("sagemaker-execution"), "iam:PassRole")
    for role in ROLES:
        for statement in _statements(_policy(role)):
            if any(a.startswith("s3:") for a in _as_list(statement["Action"])):
                assert all(r.startswith("arn:aws:s3:::QE_S3_BUCKET") for r in _as_list(statement["Resource"])), (
                    f"{role}: S3 access beyond the engine's bucket"
                )
