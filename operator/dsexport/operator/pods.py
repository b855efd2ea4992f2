"""The exporter's pod: what every CronJob and run-now Job the operator creates runs.

One function so that the operator and the tests that run the image on a real node use the same template. The pod
runs ``dsexport run`` on the flow from a ConfigMap, with each referenced Secret mounted as files (the operator
never reads them), hardened as a restricted Pod Security profile requires, and reports its RunResult as the
termination message, which the operator reads back from the pod's status.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Final

CONFIG_MOUNT: Final = "/etc/dsexport"
FLOW_KEY: Final = "flow.yaml"
SECRETS_MOUNT: Final = "/var/run/dsexport/secrets"
TERMINATION_LOG: Final = "/dev/termination-log"
CONTAINER: Final = "exporter"
UID: Final = 65532  # the image's USER
POD_NAME_ENV: Final = "DSEXPORT_POD_NAME"
NAMESPACE_ENV: Final = "DSEXPORT_NAMESPACE"


def exporter_pod_template(
    *,
    image: str,
    config_map: str,
    secrets: Sequence[str] = (),
    args: Sequence[str] = (),
    service_account: str | None = None,
    image_pull_policy: str = "IfNotPresent",
    labels: Mapping[str, str] | None = None,
    resources: Mapping[str, Any] | None = None,
    volumes: Sequence[Mapping[str, Any]] = (),
    volume_mounts: Sequence[Mapping[str, Any]] = (),
    report_status: bool = False,
    command: str = "run",
) -> dict[str, Any]:
    """A pod template (``metadata`` and ``spec``) for one run of the flow in ConfigMap ``config_map``.

    ``args`` are appended to ``dsexport run`` (e.g. ``--export NAME``, ``--reset DATASET``); ``volumes`` and
    ``volume_mounts`` add what a filesystem Destination or a local-path source needs. With ``report_status`` the
    pod gets its service account's token and its own name and namespace, to patch its result into the status of
    its DatasetExport (``--report-status``).
    """
    secret_volumes = [
        # optional: a Secret not there (yet) must not hold the pod in ContainerCreating, unseen by the operator
        # (which cannot read Secrets) until the Job's deadline; the exporter fails at once and says which one.
        {"name": f"secret-{i}", "secret": {"secretName": name, "defaultMode": 0o400, "optional": True}}
        for i, name in enumerate(secrets)
    ]
    secret_mounts = [
        {"name": f"secret-{i}", "mountPath": f"{SECRETS_MOUNT}/{name}", "readOnly": True}
        for i, name in enumerate(secrets)
    ]
    container: dict[str, Any] = {
        "name": CONTAINER,
        "image": image,
        "imagePullPolicy": image_pull_policy,
        "args": [
            command,
            "--filename",
            f"{CONFIG_MOUNT}/{FLOW_KEY}",
            *(["--secrets-dir", SECRETS_MOUNT] if secrets else []),
            "--result-file",
            TERMINATION_LOG,
            "--output",
            "json",
            *args,
        ],
        "env": [
            {"name": "DSEXPORT_LOG_FORMAT", "value": "json"},
            *(
                [
                    {"name": POD_NAME_ENV, "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                    {"name": NAMESPACE_ENV, "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
                ]
                if report_status
                else []
            ),
        ],
        "terminationMessagePath": TERMINATION_LOG,
        # A run that fails before writing its result (invalid manifests, a crash) leaves its last log lines.
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "securityContext": {
            "runAsNonRoot": True,
            "readOnlyRootFilesystem": True,
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "volumeMounts": [
            {"name": "flow", "mountPath": CONFIG_MOUNT, "readOnly": True},
            {"name": "tmp", "mountPath": "/tmp"},  # noqa: S108 - an emptyDir: the only writable folder
            *secret_mounts,
            *volume_mounts,
        ],
    }
    if resources:
        container["resources"] = dict(resources)
    spec: dict[str, Any] = {
        "restartPolicy": "Never",
        # Only to report its result: the token's account may patch this DatasetExport's status, nothing else.
        "automountServiceAccountToken": report_status,
        "enableServiceLinks": False,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": UID,
            "runAsGroup": UID,
            "fsGroup": UID,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [container],
        "volumes": [
            {"name": "flow", "configMap": {"name": config_map}},
            {"name": "tmp", "emptyDir": {"sizeLimit": "1Gi"}},
            *secret_volumes,
            *volumes,
        ],
    }
    if service_account:
        spec["serviceAccountName"] = service_account
    return {"metadata": {"labels": dict(labels or {})}, "spec": spec}
