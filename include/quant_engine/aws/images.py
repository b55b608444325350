"""Which container image a SageMaker Processing or training job runs, and why it must be Python 3.11.

The jobs import :mod:`quant_engine`, which refuses any Python but 3.11 (see the package's
``__init__``). SageMaker's XGBoost framework images bring their own Python, chosen by AWS per image
version, so running the package in one only works where that Python is 3.11. The engine's own job
image (``docker/sagemaker/Dockerfile``: ``python:3.11-slim``, the pinned requirements the job entry
points import, the package) always is; once pushed to ECR, ``QE_SAGEMAKER_IMAGE_URI`` names it.

The image of a job, first match wins:

1. the job kind's own override (``QE_PROCESSING_IMAGE_URI``, ``QE_TRAINING_IMAGE_URI``);
2. ``QE_SAGEMAKER_IMAGE_URI``, the engine's job image;
3. SageMaker's XGBoost framework image of the configured version for the region.

Whatever the source, :func:`check_job_image` looks the image up: a SageMaker XGBoost framework
image is accepted only if :data:`XGBOOST_FRAMEWORK_PYTHON` knows its Python and it is 3.11, so the
job fails here, with the fix in the message, instead of minutes later in SageMaker with an
``ImportError``. Any other image (the engine's own, or one a user built) is taken as given.
"""

from __future__ import annotations

import re

from quant_engine.config import Settings, SettingsError

__all__ = [
    "REQUIRED_PYTHON",
    "XGBOOST_FRAMEWORK_PYTHON",
    "JobImageError",
    "check_job_image",
    "framework_python",
    "job_image_uri",
]

#: The Python every job image must run (the package's own ``__init__`` refuses others).
REQUIRED_PYTHON = "3.11"
#: SageMaker XGBoost framework image version -> its Python (major.minor), read from the
#: ``PYTHON_VERSION`` argument of each version's ``docker/<version>/base/Dockerfile.cpu`` in
#: github.com/aws/sagemaker-xgboost-container. A version missing here (3.2-0: no published
#: Dockerfile was found) has an unknown Python and is refused like a wrong one.
XGBOOST_FRAMEWORK_PYTHON: dict[str, str] = {
    "1.2-2": "3.7",
    "1.3-1": "3.7",
    "1.5-1": "3.8",
    "1.7-1": "3.8",
    "3.0-5": "3.10",
}
#: ``<account>.dkr.ecr.<region>.amazonaws.com[.cn]/sagemaker-xgboost:<tag>``
_XGBOOST_FRAMEWORK_IMAGE = re.compile(
    r"^\d{12}\.dkr\.ecr\.[a-z0-9-]+\.amazonaws\.com(?:\.cn)?/sagemaker-xgboost:(?P<tag>[^@\s]+)$"
)
_FIX = (
    "build the engine's job image (docker build -f docker/sagemaker/Dockerfile .), push it to ECR and set "
    "QE_SAGEMAKER_IMAGE_URI to it (docs/aws.md, 'The job image')"
)


class JobImageError(SettingsError):
    """The chosen job image cannot run the package; the message names the image, its Python and the fix."""


def framework_python(image_uri: str) -> tuple[str, str | None] | None:
    """``(version, python)`` of a SageMaker XGBoost framework image (python None: unknown); None for others.

    Examples
    --------
    >>> framework_python("683313688378.dkr.ecr.us-east-1.amazonaws.com/sagemaker-xgboost:3.0-5")
    ('3.0-5', '3.10')
    >>> framework_python("683313688378.dkr.ecr.us-east-1.amazonaws.com/sagemaker-xgboost:3.2-0")
    ('3.2-0', None)
    >>> framework_python("123456789012.dkr.ecr.eu-west-1.amazonaws.com/quant-engine-job:0.1.0") is None
    True
    """
    match = _XGBOOST_FRAMEWORK_IMAGE.match(image_uri)
    if match is None:
        return None
    tag = match.group("tag")
    for version, python in XGBOOST_FRAMEWORK_PYTHON.items():
        if tag == version or tag.startswith(f"{version}-"):  # old tags carry "-cpu-py3"
            return version, python
    return tag, None


def check_job_image(image_uri: str) -> str:
    """``image_uri`` if a job can run the package in it; :class:`JobImageError` if it is a framework
    image whose Python is not :data:`REQUIRED_PYTHON` or not known."""
    if not isinstance(image_uri, str) or not image_uri.strip() or any(c.isspace() for c in image_uri):
        raise JobImageError(f"job image {image_uri!r} is not an image reference; {_FIX}")
    framework = framework_python(image_uri)
    if framework is None:
        return image_uri
    version, python = framework
    if python == REQUIRED_PYTHON:
        return image_uri
    found = (
        f"runs Python {python}"
        if python
        else f"runs a Python this engine does not know (known versions: {', '.join(XGBOOST_FRAMEWORK_PYTHON)})"
    )
    raise JobImageError(
        f"SageMaker's XGBoost framework image {version} ({image_uri}) {found}; quant-engine needs Python "
        f"{REQUIRED_PYTHON}: {_FIX}"
    )


def framework_image_uri(
    region: str, framework: str = "xgboost", version: str = "3.2-0", instance_type: str = "ml.m5.xlarge"
) -> str:
    """SageMaker's framework image for ``region``, from the SDK's offline table of ECR accounts."""
    from sagemaker.core import image_uris

    return image_uris.retrieve(framework, region=region, version=version, instance_type=instance_type)


def job_image_uri(
    settings: Settings,
    override: str | None,
    *,
    framework: str,
    framework_version: str,
    instance_type: str,
) -> str:
    """The checked image of one job: ``override``, else ``settings.sagemaker_image_uri``, else the framework image.

    Raises
    ------
    JobImageError
        The image would not run the package (see :func:`check_job_image`).
    """
    image = override or settings.sagemaker_image_uri
    if not image:
        image = framework_image_uri(settings.aws_region, framework, framework_version, instance_type)
        if framework_python(image) is None:  # a framework without a table here: its Python is unknown
            raise JobImageError(
                f"SageMaker's {framework} framework image {framework_version} ({image}) runs a Python this engine "
                f"does not know; quant-engine needs Python {REQUIRED_PYTHON}: {_FIX}"
            )
    return check_job_image(image)
