"""Loading the YAML a user would ``kubectl apply``, for local mode: resources, Secrets and their references."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from dsexport import api
from dsexport.errors import ConfigError


class ManifestError(ConfigError):
    """One or more documents are invalid; the message lists every problem with its field path."""


@dataclass(frozen=True)
class Bundle:
    """Everything read from a set of files, keyed by name (local mode has one namespace)."""

    datasets: dict[str, api.Dataset] = field(default_factory=dict)
    destinations: dict[str, api.Destination] = field(default_factory=dict)
    dataset_exports: dict[str, api.DatasetExport] = field(default_factory=dict)
    secrets: dict[str, dict[str, str]] = field(default_factory=dict)

    def secret(self, ref: api.ObjectRef | None) -> dict[str, str]:
        """The referenced Secret's values; an unset reference means no credentials."""
        if ref is None:
            return {}
        if ref.name not in self.secrets:
            raise ManifestError(f"Secret {ref.name!r} is referenced but not defined in the given files")
        if not self.secrets[ref.name]:  # in a pod: the (optional) volume of a Secret that does not exist
            raise ManifestError(
                f"Secret {ref.name!r} has no keys: it does not exist (yet) in the namespace, or is empty; create it "
                "with the keys the reference needs (the next run uses it)"
            )
        return self.secrets[ref.name]


def format_validation_error(where: str, error: ValidationError) -> list[str]:
    """One line per problem, ``Kind/name: spec.field.path: message``, the way kubectl reports them."""
    lines = []
    for problem in error.errors(include_url=False):
        path = ".".join(str(p) for p in problem["loc"])
        lines.append(f"{where}: {path}: {problem['msg']}" if path else f"{where}: {problem['msg']}")
    return lines


_MODELS: dict[str, type[api.Resource]] = {k.kind_name: k for k in api.KINDS}


def _secret_values(doc: Mapping[str, Any], where: str) -> dict[str, str]:
    values: dict[str, str] = {}
    for key, encoded in (doc.get("data") or {}).items():
        try:
            values[key] = base64.b64decode(str(encoded), validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            # The value itself is never echoed: it is a secret.
            raise ManifestError(f"{where}: data.{key}: not valid base64-encoded UTF-8") from None
    values.update({k: str(v) for k, v in (doc.get("stringData") or {}).items()})
    return values


def parse_documents(docs: Iterable[tuple[str, Any]], *, secrets: Mapping[str, dict[str, str]] | None = None) -> Bundle:
    """Validate every document (collecting all errors, not just the first) and check references.

    ``secrets`` are Secrets read elsewhere (mounted folders); a document may not define one of them again.
    """
    bundle = Bundle(secrets=dict(secrets or {}))
    problems: list[str] = []
    for origin, doc in docs:
        if doc is None:
            continue
        if not isinstance(doc, dict):
            problems.append(f"{origin}: expected a mapping with apiVersion and kind")
            continue
        kind = doc.get("kind")
        name = (doc.get("metadata") or {}).get("name", "?")
        where = f"{kind}/{name} ({origin})"
        if kind == "Secret" and doc.get("apiVersion") == "v1":
            if str(name) in bundle.secrets:
                problems.append(f"{where}: defined twice")
                continue
            try:
                bundle.secrets[str(name)] = _secret_values(doc, where)
            except ManifestError as e:
                problems.append(str(e))
            continue
        model = _MODELS.get(str(kind))
        if model is None:
            problems.append(f"{where}: unknown kind (expected Dataset, Destination, DatasetExport or Secret)")
            continue
        try:
            obj = model.model_validate(doc)
        except ValidationError as e:
            problems.extend(format_validation_error(where, e))
            continue
        targets: dict[str, dict[str, Any]] = {
            "Dataset": bundle.datasets,
            "Destination": bundle.destinations,
            "DatasetExport": bundle.dataset_exports,
        }
        target = targets[obj.kind_name]
        if obj.metadata.name in target:
            problems.append(f"{where}: defined twice")
        target[obj.metadata.name] = obj
    problems.extend(_reference_problems(bundle))
    if problems:
        raise ManifestError("\n".join(problems))
    return bundle


def _reference_problems(bundle: Bundle) -> list[str]:
    problems = []
    for name, export in bundle.dataset_exports.items():
        where = f"DatasetExport/{name}"
        if export.spec.destination_ref.name not in bundle.destinations:
            problems.append(
                f"{where}: spec.destinationRef.name: Destination {export.spec.destination_ref.name!r} not found"
            )
        for i, entry in enumerate(export.spec.datasets):
            if entry.name not in bundle.datasets:
                problems.append(f"{where}: spec.datasets[{i}].name: Dataset {entry.name!r} not found")
    refs = [(f"Destination/{n}", d.spec.credentials_secret_ref) for n, d in bundle.destinations.items()]
    refs += [(f"Dataset/{n}", d.spec.source.credentials_secret_ref) for n, d in bundle.datasets.items()]
    problems += [
        f"{where}: credentialsSecretRef.name: Secret {ref.name!r} not found"
        for where, ref in refs
        if ref is not None and ref.name not in bundle.secrets
    ]
    return problems


def load_secret_folders(folders: Iterable[str | Path]) -> dict[str, dict[str, str]]:
    """Secrets mounted as files, the way a pod gets them: ``FOLDER/NAME/KEY`` holds key KEY of Secret NAME.

    Entries starting with a dot are skipped: a Secret volume keeps its real files in ``..data`` and links each key
    to them, so the keys are the links.
    """
    secrets: dict[str, dict[str, str]] = {}
    for folder in map(Path, folders):
        try:
            entries = sorted(e for e in folder.iterdir() if not e.name.startswith(".") and e.is_dir())
        except OSError as e:
            raise ManifestError(f"{folder}: cannot read the Secrets folder: {e.strerror}") from None
        for entry in entries:
            if entry.name in secrets:
                raise ManifestError(f"{entry}: Secret {entry.name!r} is mounted twice")
            values: dict[str, str] = {}
            for key in sorted(k for k in entry.iterdir() if not k.name.startswith(".") and k.is_file()):
                try:
                    values[key.name] = key.read_text(encoding="utf-8")
                except OSError as e:
                    raise ManifestError(f"{key}: cannot read: {e.strerror}") from None
                except UnicodeDecodeError:
                    raise ManifestError(f"{key}: not UTF-8 text") from None  # never the value: it is a secret
            secrets[entry.name] = values
    return secrets


# LibYAML's parser where PyYAML was built with it (its wheels are), the same safe constructor on top: about ten
# times faster than the pure-Python parser, which took 6 ms of a 130 ms byte-copy run of the bench's flow file.
_SAFE_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def load_files(paths: Iterable[str | Path], *, secret_folders: Iterable[str | Path] = ()) -> Bundle:
    """Read multi-document YAML files; ``-`` is not supported on purpose: runs must be reproducible.

    ``secret_folders`` add Secrets mounted as files (see ``load_secret_folders``)."""
    secrets = load_secret_folders(secret_folders)
    docs: list[tuple[str, Any]] = []
    for path in paths:
        p = Path(path)
        try:
            text = p.read_text()
        except OSError as e:
            raise ManifestError(f"{p}: cannot read: {e.strerror}") from e
        try:
            docs.extend((f"{p}#{i + 1}", d) for i, d in enumerate(yaml.load_all(text, Loader=_SAFE_LOADER)))
        except yaml.YAMLError as e:
            raise ManifestError(f"{p}: not valid YAML: {e}") from e
    return parse_documents(docs, secrets=secrets)
