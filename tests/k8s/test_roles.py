"""The chart's user roles on a real API server: what each one allows and refuses, alone and aggregated into the
built-in view, edit and admin, asked of RBAC (``kubectl auth can-i``) and proven with real requests.

Each user is a ServiceAccount of a fresh namespace, bound there with a RoleBinding, that signs in with a token from
the TokenRequest API: its requests go through authentication and RBAC exactly as a person's would. Both checks
walk the same table of verbs x resources, so a permission granted or refused by mistake fails one of them.
"""

from __future__ import annotations

import copy
import subprocess
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner, Result
from kubernetes import client, config
from kubernetes.client.rest import ApiException
from tests.cluster.control_plane import ControlPlane, binaries
from tests.crd_cases import DATASET, DATASET_EXPORT, DESTINATION
from tests.k8s.conftest import create_namespace
from tests.servers import wait_until

from dsexport.api import GROUP, VERSION
from dsexport.cli.kubectl import main as kubectl_dsexport
from dsexport.operator.checks import CHECK_NOW
from dsexport.operator.reconcile import RESET, RUN_NOW

CHART = Path(__file__).resolve().parents[2] / "charts" / "dsexport"
TEMPLATE = "templates/user-roles.yaml"
MERGE = "application/merge-patch+json"
AGGREGATE = "rbac.authorization.k8s.io/aggregate-to-"

KINDS = ("datasets", "destinations", "datasetexports")
DOCUMENTS = {"datasets": DATASET, "destinations": DESTINATION, "datasetexports": DATASET_EXPORT}
SEEDS = {p: str(d["metadata"]["name"]) for p, d in DOCUMENTS.items()}  # web-events, marketing-s3, marketing-daily
SECRET = str(DESTINATION["spec"]["credentialsSecretRef"]["name"])
READ = ("get", "list", "watch")
WRITE = ("create", "update", "patch", "delete")
OBJECT_VERBS = (*READ, *WRITE, "deletecollection")
STATUS_VERBS = ("get", "update", "patch")
SECRET_VERBS = ("get", "list", "watch", "create")

# A permission is (resource, verb); a subresource is written "datasets/status". The table every user is checked on.
Permission = tuple[str, str]
TABLE: tuple[Permission, ...] = (
    *((p, v) for p in KINDS for v in OBJECT_VERBS),
    *((f"{p}/status", v) for p in KINDS for v in STATUS_VERBS),
    *(("secrets", v) for v in SECRET_VERBS),
)


def _reads(*kinds: str) -> frozenset[Permission]:
    """What reading a kind takes: its objects (get, list, watch) and its status (get: no list/watch exists)."""
    return frozenset({(p, v) for p in kinds for v in READ} | {(f"{p}/status", "get") for p in kinds})


def _manages(kind: str) -> frozenset[Permission]:
    """A manager reads what it manages and writes it; never its status, which is the operator's."""
    return _reads(kind) | {(kind, v) for v in WRITE}


_ALL_SECRETS = frozenset(("secrets", v) for v in SECRET_VERBS)  # the built-in edit and admin grant them, not we
_EDIT = _reads(*KINDS) | _manages("datasets") | _manages("destinations") | _manages("datasetexports") | _ALL_SECRETS
# What each user may do: nothing else in TABLE. Our roles by their suffix, then the built-in roles, then nobody.
EXPECTED: dict[str, frozenset[Permission]] = {
    "viewer": _reads(*KINDS),
    "dataset-manager": _manages("datasets"),
    "destination-manager": _manages("destinations"),
    "activator": _manages("datasetexports"),
    "view": _reads(*KINDS),
    "edit": _EDIT,
    "admin": _EDIT,
    "nobody": frozenset(),
}
OURS = ("viewer", "dataset-manager", "destination-manager", "activator")
BUILT_IN = ("view", "edit", "admin")
# Which built-in roles each of ours is aggregated into (its aggregate-to-* labels).
AGGREGATED_INTO = {"viewer": {"view", "edit", "admin"}} | {r: {"edit", "admin"} for r in OURS[1:]}


@pytest.fixture(scope="module")
def helm(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., list[dict[str, Any]]]:
    """``helm template`` of the chart (pinned helm, a private HOME): rendering needs no cluster."""
    k8s_bin, home = binaries(), tmp_path_factory.mktemp("helm")

    def template(release: str, *args: str) -> list[dict[str, Any]]:
        out = subprocess.run(
            [str(k8s_bin / "helm"), "template", release, str(CHART), *args],
            capture_output=True,
            text=True,
            check=False,
            env={"HOME": str(home), "PATH": "/usr/bin:/bin", "HELM_CACHE_HOME": str(home / "cache")},
        )
        assert out.returncode == 0, out.stderr
        return [d for d in yaml.safe_load_all(out.stdout) if d]

    return template


def _fullname(release: str) -> str:
    """The chart's ``dsexport.fullname`` for a release name, which prefixes every role's name."""
    return release if "dsexport" in release else f"{release}-dsexport"


def test_the_roles_render_by_default_with_the_charts_labels_and_least_privilege(
    helm: Callable[..., list[dict[str, Any]]],
) -> None:
    """Rendered as they are installed, the roles must be exactly the least privilege EXPECTED says, with the
    chart's labels and the aggregation labels that put each into the built-in roles it belongs in."""
    docs = helm("rel")  # no --set: values.yaml need not define userRoles for them to render
    operator_role = next(d for d in docs if d["kind"] == "ClusterRole" and d["metadata"]["name"] == "rel-dsexport")
    roles = {d["metadata"]["name"]: d for d in docs if d["kind"] == "ClusterRole" and d is not operator_role}
    assert sorted(roles) == sorted(f"rel-dsexport-{r}" for r in OURS)
    for suffix in OURS:
        role = roles[f"rel-dsexport-{suffix}"]
        labels = role["metadata"]["labels"]
        assert operator_role["metadata"]["labels"].items() <= labels.items(), "the chart's labels helper"
        assert {k.removeprefix(AGGREGATE) for k, v in labels.items() if k.startswith(AGGREGATE) and v == "true"} == (
            AGGREGATED_INTO[suffix]
        )
        granted = set()
        for rule in role["rules"]:
            assert set(rule) == {"apiGroups", "resources", "verbs"}, "no resourceNames or nonResourceURLs"
            assert rule["apiGroups"] == ["dsexport.io"]
            assert "*" not in rule["resources"] and "*" not in rule["verbs"]
            granted |= {(r, v) for r in rule["resources"] for v in rule["verbs"]}
        assert granted == EXPECTED[suffix]  # which also says: no /status write, no Secrets


def test_user_roles_create_false_renders_none(helm: Callable[..., list[dict[str, Any]]]) -> None:
    """userRoles.create=false must drop them (a ``| default true`` would turn an explicit false into true)."""
    docs = helm("rel", "--set", "userRoles.create=false")
    assert [d["metadata"]["name"] for d in docs if d["kind"] == "ClusterRole"] == ["rel-dsexport"]  # the operator's
    assert len(helm("rel", "--set", "userRoles.create=true", "--show-only", TEMPLATE)) == len(OURS)


@pytest.fixture(scope="module")
def release(helm: Callable[..., list[dict[str, Any]]], api: client.ApiClient, crds: list[str]) -> Iterator[str]:
    """The user roles of a release of our own (not ``dsexport``, which the chart test installs), applied through
    the API as helm would, and deleted afterwards: the aggregation controller then takes them out of view/edit/admin.
    """
    name = f"roles-{uuid.uuid4().hex[:6]}"
    rbac = client.RbacAuthorizationV1Api(api)
    roles = helm(name, "--set", "userRoles.create=true", "--show-only", TEMPLATE)
    for role in roles:
        rbac.create_cluster_role(role)
    yield _fullname(name)
    for role in roles:
        rbac.delete_cluster_role(role["metadata"]["name"])


def _create_as(custom: client.CustomObjectsApi, namespace: str, plural: str, name: str) -> None:
    """One of the shared example documents (tests/crd_cases.py), valid for the CRDs as they are, under a new name."""
    body = copy.deepcopy(DOCUMENTS[plural]) | {"metadata": {"name": name, "namespace": namespace}}
    custom.create_namespaced_custom_object(GROUP, VERSION, namespace, plural, body)


def _role_ref(fullname: str, subject: str) -> str:
    """The ClusterRole a user is bound to: one of ours (named after the release) or a built-in one."""
    return f"{fullname}-{subject}" if subject in OURS else subject


def username(namespace: str, subject: str) -> str:
    """The name RBAC and the API server's messages know a ServiceAccount by."""
    return f"system:serviceaccount:{namespace}:{subject}"


def _rbac_allows(api: client.ApiClient, namespace: str, subject: str, permission: Permission) -> bool:
    """RBAC's answer as the API server's authorizer has it now (a SubjectAccessReview, asked as the admin)."""
    resource, _, subresource = permission[0].partition("/")
    review = {
        "spec": {
            "user": username(namespace, subject),
            "groups": ["system:serviceaccounts", f"system:serviceaccounts:{namespace}", "system:authenticated"],
            "resourceAttributes": {
                "namespace": namespace,
                "verb": permission[1],
                "group": "" if resource == "secrets" else GROUP,
                "resource": resource,
                "subresource": subresource,
            },
        }
    }
    return bool(client.AuthorizationV1Api(api).create_subject_access_review(review).status.allowed)


@pytest.fixture(scope="module")
def namespace(api: client.ApiClient, release: str) -> Iterator[str]:
    """A namespace with one ServiceAccount per user, each bound by a RoleBinding to its role (``nobody`` to none),
    a Dataset, Destination, DatasetExport and Secret to work on; returned once RBAC grants what EXPECTED says, that
    is, once the aggregation controller has copied our roles into view, edit and admin (polled, with a deadline).
    """
    name = create_namespace(api, "roles")
    core, rbac = client.CoreV1Api(api), client.RbacAuthorizationV1Api(api)
    for subject in EXPECTED:
        core.create_namespaced_service_account(name, {"metadata": {"name": subject}})
        if subject == "nobody":
            continue
        rbac.create_namespaced_role_binding(
            name,
            {
                "metadata": {"name": subject},
                "roleRef": {
                    "apiGroup": "rbac.authorization.k8s.io",
                    "kind": "ClusterRole",
                    "name": _role_ref(release, subject),
                },
                "subjects": [{"kind": "ServiceAccount", "name": subject, "namespace": name}],
            },
        )
    custom = client.CustomObjectsApi(api)
    for plural in KINDS:
        _create_as(custom, name, plural, SEEDS[plural])
    _create_as(custom, name, "datasets", "orders")  # the flow's second dataset
    core.create_namespaced_secret(name, {"metadata": {"name": SECRET}, "stringData": {"accessKeyId": "AKIA-TEST"}})
    for subject, allowed in EXPECTED.items():
        try:
            wait_until(
                lambda s=subject, a=allowed: all(_rbac_allows(api, name, s, p) for p in a),  # type: ignore[misc]
                timeout=60,
                what=f"RBAC to grant {subject} its permissions",
            )
        except TimeoutError:
            missing = sorted(p for p in allowed if not _rbac_allows(api, name, subject, p))
            raise AssertionError(f"after 60 s, RBAC still refuses {subject}: {missing}") from None
    yield name
    core.delete_namespace(name, grace_period_seconds=0)


@dataclass
class User:
    name: str
    kubeconfig: Path
    api: client.ApiClient


@pytest.fixture(scope="module")
def users(
    api: client.ApiClient, control_plane: ControlPlane, namespace: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, User]]:
    """Each ServiceAccount signed in with its own token (TokenRequest API): a kubeconfig and a client per user."""
    folder = tmp_path_factory.mktemp("users")
    core = client.CoreV1Api(api)
    found: dict[str, User] = {}
    request = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": {"expirationSeconds": 3600}}
    for subject in EXPECTED:
        token = core.create_namespaced_service_account_token(subject, namespace, request).status.token
        kubeconfig = yaml.safe_load(control_plane.kubeconfig.read_text())
        kubeconfig["users"] = [{"name": subject, "user": {"token": token}}]
        kubeconfig["contexts"][0]["context"]["user"] = subject
        path = folder / f"{subject}.kubeconfig"
        path.write_text(yaml.safe_dump(kubeconfig))
        path.chmod(0o600)
        found[subject] = User(subject, path, config.new_client_from_config(config_file=str(path)))
    yield found
    for user in found.values():
        user.api.close()


def test_view_edit_and_admin_aggregate_our_roles(api: client.ApiClient, release: str, namespace: str) -> None:
    """The aggregation controller copied each of our roles' rules into the built-in roles its labels name, and no
    others (a manager's write rules in view would let every viewer edit)."""
    rbac = client.RbacAuthorizationV1Api(api)
    ours = {suffix: rbac.read_cluster_role(f"{release}-{suffix}") for suffix in OURS}
    for built_in in BUILT_IN:
        rules = [r.to_dict() for r in rbac.read_cluster_role(built_in).rules]
        assert rbac.read_cluster_role(built_in).aggregation_rule is not None
        for suffix, role in ours.items():
            contained = all(rule.to_dict() in rules for rule in role.rules)
            assert contained == (built_in in AGGREGATED_INTO[suffix]), f"{suffix} in {built_in}: {contained}"


def can_i(cp: ControlPlane, namespace: str, subject: str, permission: Permission) -> bool:
    """``kubectl auth can-i`` as the admin impersonating the user (the API server adds a ServiceAccount's groups)."""
    resource, _, subresource = permission[0].partition("/")
    args = [str(cp.bin / "kubectl"), "--kubeconfig", str(cp.kubeconfig), "auth", "can-i", permission[1]]
    args += [resource if resource == "secrets" else f"{resource}.{GROUP}", "-n", namespace]
    args += ["--as", username(namespace, subject), *(["--subresource", subresource] if subresource else [])]
    env = {"HOME": str(cp.root), "PATH": "/usr/bin:/bin"}  # kubectl's discovery cache goes under HOME
    out = subprocess.run(args, capture_output=True, text=True, check=False, env=env)
    assert (out.returncode, out.stdout.strip()) in {(0, "yes"), (1, "no")}, out.stderr
    return out.returncode == 0


@pytest.mark.parametrize("subject", list(EXPECTED))
def test_can_i(control_plane: ControlPlane, namespace: str, subject: str) -> None:
    """RBAC's answer for the whole table, allowed and refused alike, as an administrator would ask it."""
    with ThreadPoolExecutor(max_workers=4) as pool:
        answers = dict(zip(TABLE, pool.map(lambda p: can_i(control_plane, namespace, subject, p), TABLE), strict=True))
    allowed = {p for p, yes in answers.items() if yes}
    assert allowed == EXPECTED[subject], (
        f"granted but not expected: {sorted(allowed - EXPECTED[subject])}; "
        f"expected but refused: {sorted(EXPECTED[subject] - allowed)}"
    )


class Requests:
    """One user's real requests for each permission of TABLE: True when served, False when refused with 403 (any
    other failure raises). Every write's effect is checked as the admin, so a refusal must also leave no trace."""

    def __init__(self, admin: client.ApiClient, user: User, namespace: str) -> None:
        """The user's clients make the requests; the admin's sets up victims and checks effects."""
        self.admin = client.CustomObjectsApi(admin)
        self.admin_core = client.CoreV1Api(admin)
        self.custom = client.CustomObjectsApi(user.api)
        self.core = client.CoreV1Api(user.api)
        self.ns = namespace
        self.who = user.name

    def __call__(self, permission: Permission) -> bool:
        """Make the one request that exercises ``permission``."""
        resource, verb = permission
        if resource == "secrets":
            return self.secrets(verb)
        if resource.endswith("/status"):
            return self.status(resource.removesuffix("/status"), verb)
        return self.objects(resource, verb)

    @staticmethod
    def served(call: Callable[[], object]) -> bool:
        """True when served, False on 403 (RBAC's refusal); anything else is a broken test and raises."""
        try:
            call()
        except ApiException as e:
            if e.status == 403:
                assert "forbidden" in str(e.body), e.body
                return False
            raise
        return True

    def exists(self, plural: str, name: str) -> bool:
        """Seen by the admin, so the answer does not depend on what the user may read."""
        try:
            self.admin.get_namespaced_custom_object(GROUP, VERSION, self.ns, plural, name)
        except ApiException as e:
            if e.status == 404:
                return False
            raise
        return True

    def admin_get(self, plural: str, name: str) -> dict[str, Any]:
        """The object as it is, read by the admin, to see whether a request changed it."""
        obj: dict[str, Any] = self.admin.get_namespaced_custom_object(GROUP, VERSION, self.ns, plural, name)
        return obj

    def watch(self, start: Callable[..., Any]) -> None:
        """Open a watch and close it once the API server has answered (allowed: 200, the stream starts)."""
        start(watch=True, timeout_seconds=5, _preload_content=False).close()

    def objects(self, plural: str, verb: str) -> bool:
        """The object verbs; writes go to the seeded objects or to per-user names, so users do not interfere."""
        seed, mine = SEEDS[plural], f"{self.who}-{plural}"[:63]
        args = (GROUP, VERSION, self.ns, plural)
        if verb == "get":
            return self.served(lambda: self.custom.get_namespaced_custom_object(*args, seed))
        if verb == "list":
            return self.served(lambda: self.custom.list_namespaced_custom_object(*args))
        if verb == "watch":
            return self.served(lambda: self.watch(lambda **kw: self.custom.list_namespaced_custom_object(*args, **kw)))
        if verb == "create":
            body = copy.deepcopy(DOCUMENTS[plural]) | {"metadata": {"name": mine, "namespace": self.ns}}
            served = self.served(lambda: self.custom.create_namespaced_custom_object(*args, body))
            assert self.exists(plural, mine) == served
            return served
        if verb == "update":
            obj = self.admin_get(plural, seed)
            obj["metadata"].setdefault("labels", {})["updated-by"] = self.who
            served = self.served(lambda: self.custom.replace_namespaced_custom_object(*args, seed, obj))
            assert (self.admin_get(plural, seed)["metadata"].get("labels", {}).get("updated-by") == self.who) == served
            return served
        if verb == "patch":  # what the kubectl plugin sends: run-now and reset on a flow, check-now on a Destination
            keys = {"datasetexports": [RUN_NOW, RESET], "destinations": [CHECK_NOW]}.get(plural, ["patched-by"])
            patch = {"metadata": {"annotations": dict.fromkeys(keys, self.who)}}
            served = self.served(
                lambda: self.custom.patch_namespaced_custom_object(*args, seed, patch, _content_type=MERGE)
            )
            annotations = self.admin_get(plural, seed)["metadata"].get("annotations", {})
            assert all(annotations.get(k) == self.who for k in keys) == served
            return served
        if verb == "delete":
            victim = f"{mine[:56]}-victim"
            _create_as(self.admin, self.ns, plural, victim)
            served = self.served(lambda: self.custom.delete_namespaced_custom_object(*args, victim))
            assert self.exists(plural, victim) != served
            return served
        assert verb == "deletecollection"
        # a selector that matches nothing: should it be served by mistake, it deletes nothing
        return self.served(lambda: self.custom.delete_collection_namespaced_custom_object(*args, label_selector="x=y"))

    def status(self, plural: str, verb: str) -> bool:
        """The status subresource, which only the operator may write: a refused write must leave it unchanged."""
        seed, args = SEEDS[plural], (GROUP, VERSION, self.ns, plural)
        before = self.admin_get(plural, seed).get("status")
        mark = {"observedGeneration": 1000 + 10 * list(EXPECTED).index(self.who) + STATUS_VERBS.index(verb)}
        if verb == "get":
            return self.served(lambda: self.custom.get_namespaced_custom_object_status(*args, seed))
        if verb == "update":
            obj = self.admin_get(plural, seed) | {"status": mark}
            served = self.served(lambda: self.custom.replace_namespaced_custom_object_status(*args, seed, obj))
        else:
            patch = {"status": mark}
            served = self.served(
                lambda: self.custom.patch_namespaced_custom_object_status(*args, seed, patch, _content_type=MERGE)
            )
        assert (self.admin_get(plural, seed).get("status") != before) == served, "a refused write left no trace"
        return served

    def secrets(self, verb: str) -> bool:
        """Secrets, which stay under the namespace's own RBAC: ours grant none, the built-in edit and admin do."""
        if verb == "get":
            return self.served(lambda: self.core.read_namespaced_secret(SECRET, self.ns))
        if verb == "list":
            return self.served(lambda: self.core.list_namespaced_secret(self.ns))
        if verb == "watch":
            return self.served(lambda: self.watch(lambda **kw: self.core.list_namespaced_secret(self.ns, **kw)))
        assert verb == "create"
        body = {"metadata": {"name": f"{self.who}-secret"}, "stringData": {"k": "v"}}
        served = self.served(lambda: self.core.create_namespaced_secret(self.ns, body))
        names = {s.metadata.name for s in self.admin_core.list_namespaced_secret(self.ns).items}
        assert (f"{self.who}-secret" in names) == served
        return served


@pytest.mark.parametrize("subject", list(EXPECTED))
def test_real_requests(api: client.ApiClient, namespace: str, users: dict[str, User], subject: str) -> None:
    """What a user can really do, signed in with its token: can-i could agree with a wrong role, a request cannot."""
    requests = Requests(api, users[subject], namespace)
    allowed = {p for p in TABLE if requests(p)}
    assert allowed == EXPECTED[subject], (
        f"served but not expected: {sorted(allowed - EXPECTED[subject])}; "
        f"expected but refused: {sorted(EXPECTED[subject] - allowed)}"
    )


def plugin(user: User, namespace: str, *args: str) -> Result:
    """``kubectl dsexport`` as that user (its token's kubeconfig), in process."""
    return CliRunner().invoke(kubectl_dsexport, ["--kubeconfig", str(user.kubeconfig), "-n", namespace, *args])


def test_the_kubectl_plugin_with_the_roles(api: client.ApiClient, namespace: str, users: dict[str, User]) -> None:
    """The activator runs and resets flows and reads their status, the destination manager asks for a check; the
    viewer reads but is told, in the API server's words, that it may not patch."""
    flow, destination = SEEDS["datasetexports"], SEEDS["destinations"]
    custom = client.CustomObjectsApi(api)
    for args in (["run-now", flow], ["reset", flow, "orders", "--yes"], ["status", flow]):
        result = plugin(users["activator"], namespace, *args)
        assert result.exit_code == 0, result.output
    annotations = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, "datasetexports", flow)["metadata"]
    assert annotations["annotations"][RESET] == "orders"
    result = plugin(users["destination-manager"], namespace, "check", destination)
    assert result.exit_code == 0, result.output
    assert plugin(users["viewer"], namespace, "status", flow).exit_code == 0
    for who, args, verb, resource in [
        ("viewer", ["run-now", flow], "patch", "datasetexports"),
        ("activator", ["check", destination], "get", "destinations"),
        ("dataset-manager", ["reset", flow, "orders", "--yes"], "get", "datasetexports"),
    ]:
        result = plugin(users[who], namespace, *args)
        assert result.exit_code == 1, result.output
        assert f'User "{username(namespace, who)}" cannot {verb} resource "{resource}"' in result.stderr


def test_kubectl_deletes_all_without_deletecollection(
    api: client.ApiClient, control_plane: ControlPlane, namespace: str, users: dict[str, User]
) -> None:
    """No role grants deletecollection, yet ``kubectl delete --all``/``-l`` works: kubectl deletes one by one."""
    custom = client.CustomObjectsApi(api)
    names = [f"bulk-{i}" for i in range(3)]
    for name in names:
        body = copy.deepcopy(DATASET) | {"metadata": {"name": name, "namespace": namespace, "labels": {"bulk": "y"}}}
        custom.create_namespaced_custom_object(GROUP, VERSION, namespace, "datasets", body)
    kubectl = [str(control_plane.bin / "kubectl"), "--kubeconfig", str(users["dataset-manager"].kubeconfig)]
    out = subprocess.run(
        [*kubectl, "-n", namespace, "delete", f"datasets.{GROUP}", "-l", "bulk=y", "--wait=false"],
        capture_output=True,
        text=True,
        check=False,
        env={"HOME": str(control_plane.root), "PATH": "/usr/bin:/bin"},
    )
    assert out.returncode == 0, out.stderr
    left = custom.list_namespaced_custom_object(GROUP, VERSION, namespace, "datasets", label_selector="bulk=y")
    assert left["items"] == []
