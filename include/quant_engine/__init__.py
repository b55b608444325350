"""quant-engine: from backtest to live signals without the usual breakage.

The domain library. It imports nothing from Airflow: DAGs, the bridge service and the CLI are thin
faces over the same functions.
"""

import sys

if sys.version_info[:2] != (3, 11):  # the SageMaker SDK and Airflow 3 share an environment only on 3.11
    raise ImportError(
        f"quant-engine needs Python 3.11 (the SageMaker SDK and Airflow 3 cannot share a 3.12 environment); "
        f"this is Python {sys.version_info.major}.{sys.version_info.minor} at {sys.executable}"
    )

__version__ = "0.1.0"
