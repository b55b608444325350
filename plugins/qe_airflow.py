"""Airflow-side helpers shared by the DAGs; the only code that knows both Airflow and quant-engine.

Lives in the plugins folder, which Airflow puts on ``sys.path`` for DAG files and workers alike.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from airflow.sdk.exceptions import AirflowFailException


@contextlib.contextmanager
def fail_fast_on_bad_input() -> Iterator[None]:
    """Turn the library's bad-input errors into a task failure that is not retried.

    Retrying a run whose params name an unknown ticker or an empty range only delays the error the
    user has to read; infrastructure errors (I/O, network) still go through the normal retries.
    """
    try:
        yield
    except (ValueError, KeyError, FileNotFoundError) as exc:
        raise AirflowFailException(f"{type(exc).__name__}: {exc}") from exc
