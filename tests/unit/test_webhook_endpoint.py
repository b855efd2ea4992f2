"""The leader's EndpointSlice for the webhook Service: what the API server resolves the Service to."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from dsexport.operator.handlers import PodAddress, endpoint_slice, own_pod, webhook_configuration

POD = PodAddress(ip="10.244.3.7", name="dsexport-7c9-abcde", namespace="dsexport-system", uid="1234-uid")


def test_the_slice_names_this_pod_under_the_services_port_name() -> None:
    found = endpoint_slice(service="dsexport-webhook", port=9443, pod=POD)
    assert found["metadata"]["labels"]["kubernetes.io/service-name"] == "dsexport-webhook"
    assert found["metadata"]["name"] == "dsexport-webhook-leader"
    # the API server matches the Service's port by name, then dials the endpoint's address and this port
    assert found["ports"] == [{"name": "webhook", "port": 9443, "protocol": "TCP"}]
    assert [e["addresses"] for e in found["endpoints"]] == [["10.244.3.7"]]
    assert found["addressType"] == "IPv4"
    # owned by the pod: a leader that goes takes its endpoint along
    assert found["metadata"]["ownerReferences"] == [
        {"apiVersion": "v1", "kind": "Pod", "name": "dsexport-7c9-abcde", "uid": "1234-uid"}
    ]


def test_an_ipv6_pod_gets_an_ipv6_slice() -> None:
    pod = PodAddress(ip="fd00::7", name="p", namespace="n", uid="u")
    assert endpoint_slice(service="s", port=9443, pod=pod)["addressType"] == "IPv6"


def test_own_pod_needs_all_four_downward_api_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    values = {"IP": POD.ip, "NAME": POD.name, "NAMESPACE": POD.namespace, "UID": POD.uid}
    for key, value in values.items():
        monkeypatch.setenv(f"DSEXPORT_POD_{key}", value)
    assert own_pod() == POD
    monkeypatch.delenv("DSEXPORT_POD_UID")
    assert own_pod() is None  # then the Service must select the operator's pods itself


def test_the_configuration_routes_each_kind_to_its_handler_and_never_blocks_a_deletion() -> None:
    found = webhook_configuration(service={"namespace": "ns", "name": "svc", "port": 443}, ca_bundle="Q0E=")
    assert found["kind"] == "ValidatingWebhookConfiguration" and found["metadata"] == {"name": "dsexport.io"}
    by_name = {w["name"]: w for w in found["webhooks"]}
    assert set(by_name) == {"dataset-in-use.dsexport.io", "destination-in-use.dsexport.io"}
    dataset = by_name["dataset-in-use.dsexport.io"]
    # kopf serves each handler at /<handler id>
    assert dataset["clientConfig"] == {
        "service": {"namespace": "ns", "name": "svc", "port": 443, "path": "/dataset-in-use"},
        "caBundle": "Q0E=",
    }
    assert dataset["rules"][0]["resources"] == ["datasets"] and dataset["rules"][0]["operations"] == ["DELETE"]
    assert {w["failurePolicy"] for w in found["webhooks"]} == {"Ignore"}  # the in-use finalizer still holds it


def test_a_write_refused_because_the_namespace_goes_ends_the_handler_quietly() -> None:
    from dsexport.operator.apiserver import ApiError  # noqa: PLC0415 - only this test needs it
    from dsexport.operator.handlers import unless_namespace_goes  # noqa: PLC0415 - the subject

    def refused(*causes: str) -> Callable[..., None]:
        def handler(**_: object) -> None:
            raise ApiError(status=403, reason="Forbidden", causes=causes)

        return handler

    unless_namespace_goes(refused("NamespaceTerminating"))(namespace="ns", name="flow")  # no exception
    with pytest.raises(ApiError):  # any other refusal is a real one
        unless_namespace_goes(refused())(namespace="ns", name="flow")
