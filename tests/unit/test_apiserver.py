"""The operator's own API client: what it makes of the API server's refusals, and of kubeconfigs it finds."""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from pathlib import Path

import pytest
import urllib3
import yaml

from dsexport.operator import apiserver
from dsexport.operator.apiserver import ApiError


def _response(status: int, body: object, reason: str = "Forbidden") -> urllib3.HTTPResponse:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    return urllib3.HTTPResponse(body=data, status=status, reason=reason, preload_content=True)


def test_a_refusal_carries_the_servers_reason_message_and_causes() -> None:
    status = {
        "kind": "Status",
        "reason": "Forbidden",
        "message": 'configmaps "x" is forbidden: unable to create new content in namespace ns because it is being '
        "terminated",
        "details": {"causes": [{"reason": "NamespaceTerminating", "message": "namespace ns is being terminated"}]},
    }
    e = ApiError.of(_response(403, status))
    assert (e.status, e.reason, e.causes) == (403, "Forbidden", ("NamespaceTerminating",))
    assert "being terminated" in str(e) and str(e).startswith("HTTP 403 Forbidden")


@pytest.mark.parametrize("body", [b"<html>bad gateway</html>", b"[]", b'{"details": "x", "message": 7}'])
def test_a_refusal_that_is_not_a_status_still_says_what_happened(body: bytes) -> None:
    e = ApiError.of(_response(502, body, reason="Bad Gateway"))
    assert (e.status, e.reason, e.message, e.causes) == (502, "Bad Gateway", "", ())


def _kubeconfig(tmp_path: Path, user: Mapping[str, object], cluster: Mapping[str, object] | None = None) -> Path:
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "current-context": "c",
        "contexts": [{"name": "c", "context": {"cluster": "k", "user": "u"}}],
        "clusters": [{"name": "k", "cluster": cluster or {"server": "https://127.0.0.1:6443"}}],
        "users": [{"name": "u", "user": user}],
    }
    path = tmp_path / "kubeconfig"
    path.write_text(yaml.safe_dump(config))
    return path


def test_a_kubeconfig_token_file_is_relative_to_the_kubeconfig(tmp_path: Path) -> None:
    (tmp_path / "token").write_text("s3cret\n")
    server = apiserver.from_kubeconfig(str(_kubeconfig(tmp_path, {"tokenFile": "token"})))
    assert server.server == "https://127.0.0.1:6443"
    assert server._token() == "s3cret"


@pytest.mark.parametrize(
    ("user", "cluster", "says"),
    [
        ({"exec": {"command": "aws"}}, None, "exec plugin"),
        ({"token": "t"}, {"server": "https://x", "insecure-skip-tls-verify": True}, "skips TLS verification"),
        ({"token": "t"}, {"certificate-authority-data": "eA=="}, "has no server"),
    ],
)
def test_a_kubeconfig_the_operator_cannot_use_is_refused_with_the_reason(
    tmp_path: Path, user: dict[str, object], cluster: dict[str, object] | None, says: str
) -> None:
    with pytest.raises(apiserver.ConfigError, match=says) as raised:
        apiserver.from_kubeconfig(str(_kubeconfig(tmp_path, user, cluster)))
    assert "s3cret" not in str(raised.value)


def test_a_kubeconfig_ca_that_is_not_a_certificate_is_an_error_not_an_unverified_connection(tmp_path: Path) -> None:
    cluster = {"server": "https://x", "certificate-authority-data": base64.b64encode(b"not a pem").decode()}
    with pytest.raises(apiserver.ConfigError, match="certificate-authority"):
        apiserver.from_kubeconfig(str(_kubeconfig(tmp_path, {"token": "t"}, cluster)))
