"""Reports leave the worker's disk on the aws backend: the DAGs publish them to S3 with the provider's S3Hook."""

from __future__ import annotations

from pathlib import Path

import boto3
import pytest
from airflow.providers.amazon.aws.hooks.s3 import S3Hook
from moto_aws import AWS_BUCKET, AWS_KEYS, AWS_REGION
from qe_aws import publish_report

from quant_engine.config import Settings


def report_folder(root: Path, *, complete: bool = True) -> Path:
    folder = root / "manual__2026-03-02"
    (folder / "figures").mkdir(parents=True)
    (folder / "report.html").write_text("<html>report</html>")
    (folder / "figures" / "paths.png").write_bytes(b"\x89PNG fake")
    if complete:
        (folder / "report.json").write_text('{"pbo": 0.2}')
    return folder


def test_a_report_is_copied_through_the_connection_with_its_json_last(
    aws_connection: Settings, moto_server: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    uploaded: list[str] = []
    load_file = S3Hook.load_file

    def recording_load_file(hook: S3Hook, filename, key, **kwargs) -> None:
        uploaded.append(key)
        load_file(hook, filename, key, **kwargs)

    monkeypatch.setattr(S3Hook, "load_file", recording_load_file)
    where = publish_report(report_folder(tmp_path), "wfo")

    prefix = "quant-engine/reports/wfo/manual__2026-03-02"
    assert where == f"s3://{AWS_BUCKET}/{prefix}/report.html"
    assert uploaded[-1] == f"{prefix}/report.json"  # a reader that finds report.json finds the whole report
    s3 = boto3.client("s3", region_name=AWS_REGION, endpoint_url=moto_server, **AWS_KEYS)
    stored = {o["Key"]: o["Size"] for o in s3.list_objects_v2(Bucket=AWS_BUCKET, Prefix=prefix)["Contents"]}
    assert stored == {
        f"{prefix}/report.html": 19,
        f"{prefix}/figures/paths.png": 9,
        f"{prefix}/report.json": 12,
    }
    assert publish_report(report_folder(tmp_path / "again"), "wfo") == where  # a rerun replaces it


def test_a_folder_without_its_json_is_refused_and_nothing_is_copied(
    aws_connection: Settings, moto_server: str, tmp_path: Path
) -> None:
    with pytest.raises(FileNotFoundError, match="holds no report.json"):
        publish_report(report_folder(tmp_path, complete=False), "drift")
    s3 = boto3.client("s3", region_name=AWS_REGION, endpoint_url=moto_server, **AWS_KEYS)
    assert s3.list_objects_v2(Bucket=AWS_BUCKET).get("KeyCount") == 0


def test_locally_the_report_stays_where_it_was_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QE_BACKEND", "local")
    folder = report_folder(tmp_path)
    assert publish_report(folder, "wfo") == str(folder / "report.html")
