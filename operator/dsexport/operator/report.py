"""The exporter pod's side of reporting: its RunResult into the status of its own DatasetExport.

A termination message holds 4 KiB, too little for a flow of 100 datasets, so the pod patches its whole result
into ``status.pendingResults[<pod name>]`` (a merge patch of one key: pods of other Jobs writing at the same time
do not conflict). Its service account may patch that one status and nothing else. The operator folds the
result into the totals when the Job finishes.
"""

from __future__ import annotations

import logging
import os
from typing import Final

from tenacity import retry, retry_if_exception, stop_after_delay, wait_exponential
from urllib3.exceptions import HTTPError

from dsexport.operator import apiserver
from dsexport.operator.apiserver import ApiError
from dsexport.operator.kube import MERGE_PATCH, custom_path
from dsexport.operator.pods import NAMESPACE_ENV, POD_NAME_ENV

REPORT_SECONDS: Final = 60

log = logging.getLogger(__name__)


class ReportError(Exception):
    """The result could not be recorded in the DatasetExport's status."""


def _transient(error: BaseException) -> bool:
    return not isinstance(error, ApiError) or error.status in (409, 429) or error.status >= 500


def report_result(*, dataset_export: str, result_json: str) -> None:
    """Patch ``result_json`` into the pod's DatasetExport; retried for a minute when the API server is away."""
    pod, namespace = os.environ.get(POD_NAME_ENV), os.environ.get(NAMESPACE_ENV)
    if not pod or not namespace:
        raise ReportError(f"--report-status needs {POD_NAME_ENV} and {NAMESPACE_ENV} (set in the exporter pod)")
    try:
        server = apiserver.in_cluster()
    except apiserver.ConfigError as e:
        raise ReportError(f"--report-status runs only in a pod with a service account token: {e}") from None
    path = custom_path(plural="datasetexports", namespace=namespace, name=dataset_export) + "/status"
    body = {"status": {"pendingResults": {pod: result_json}}}

    @retry(
        retry=retry_if_exception(_transient),
        stop=stop_after_delay(REPORT_SECONDS),
        wait=wait_exponential(multiplier=0.5, max=8),
        reraise=True,
    )
    def patch() -> None:
        server.request("PATCH", path, body=body, content_type=MERGE_PATCH)

    try:
        patch()
    except ApiError as e:
        raise ReportError(f"cannot record the result in DatasetExport {namespace}/{dataset_export}: {e}") from None
    except (OSError, HTTPError) as e:
        raise ReportError(f"cannot reach the API server to record the result: {e}") from None
