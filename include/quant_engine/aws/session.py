"""AWS credentials and clients, made in one place from a ``boto3.Session``.

The library never reaches for boto3's default chain by itself: a session is handed in (in Airflow
from a connection, on the command line and in the bridge from the standard environment) and every
client comes from it with the configured endpoint (a moto server or LocalStack when set).
"""

from __future__ import annotations

from typing import Any

import boto3
from botocore.config import Config

from quant_engine.config import Settings

__all__ = ["AwsClients", "endpoint_client_config"]


class AwsClients:
    """Clients of one ``boto3.Session``, made once per service.

    Parameters
    ----------
    session : boto3.Session
        Credentials and region.
    endpoint_url : str, optional
        Every client's endpoint (``QE_AWS_ENDPOINT_URL``): a moto server or LocalStack.
    """

    def __init__(self, session: boto3.Session, endpoint_url: str | None = None) -> None:
        self.session = session
        self.endpoint_url = endpoint_url
        self._clients: dict[str, Any] = {}

    @classmethod
    def from_settings(cls, settings: Settings) -> AwsClients:
        """A session from the standard environment, in the configured region and endpoint."""
        return cls(boto3.Session(region_name=settings.aws_region), settings.aws_endpoint_url)

    @property
    def region(self) -> str:
        return str(self.session.region_name)

    def client(self, service: str, config: Any = None) -> Any:
        """The client of ``service`` (``"s3"``, ``"sagemaker"``...), made on first use.

        ``config`` (a ``botocore.config.Config``: timeouts, retries, pool size) makes a client of its
        own, not shared with callers that want the defaults.
        """
        if config is not None:
            return self.session.client(service, endpoint_url=self.endpoint_url, config=config)
        if service not in self._clients:
            self._clients[service] = self.session.client(service, endpoint_url=self.endpoint_url)
        return self._clients[service]


def endpoint_client_config(timeout_s: float, workers: int) -> Config:
    """A botocore ``Config`` that gives up within ``timeout_s`` and leaves retrying to the caller
    (the bridge's ``EndpointPredictor``), with a pool of ``workers`` connections."""
    return Config(
        connect_timeout=timeout_s,
        read_timeout=timeout_s,
        retries={"total_max_attempts": 1},
        max_pool_connections=workers,
    )
