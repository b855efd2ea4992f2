"""One error hierarchy for everything an export can meet, each error saying whether waiting could help.

The operator turns a failed run into either "retry" (the store did not answer, a connection dropped: the same run
may well succeed later) or "report and wait for a change" (bad configuration, refused credentials, a schema the
format cannot hold, a destination whose state forbids the export: retrying only repeats the failure). So every
error carries ``transient``; the class gives the usual answer and a raiser that knows better says so.

Messages are for the user: they say what is wrong and what to fix, name the object (``Destination/NAME``, a file,
a column) and never carry a secret. Callers catch :class:`DsexportError`, never a list of builtin types; anything
else that escapes is a bug.
"""

from __future__ import annotations

from typing import ClassVar


class DsexportError(Exception):
    """Base of every error the engine reports as a failed result rather than a traceback."""

    transient_by_default: ClassVar[bool] = False
    reason: ClassVar[str] = "ExportFailed"  # one CamelCase word, as a Kubernetes condition's reason

    def __init__(self, message: str, *, transient: bool | None = None) -> None:
        super().__init__(message)
        self.transient = self.transient_by_default if transient is None else transient

    @property
    def permanent(self) -> bool:
        """Retrying cannot help: something in the spec, the credentials or the data must change first."""
        return not self.transient

    @property
    def message(self) -> str:
        return str(self)


class ConfigError(DsexportError):
    """The resources as written cannot work: an invalid document, a missing reference, a column not in the data."""

    reason = "InvalidSpec"


class SourceError(DsexportError):
    """The dataset's files cannot be listed or read; the message names the source URI (or file), never credentials."""

    reason = "SourceFailed"


class DestinationError(DsexportError):
    """A destination operation failed; the message names the Destination and never carries a secret.

    Permanent unless the raiser says otherwise: a store that stopped answering is raised with ``transient=True``.
    """

    reason = "DestinationFailed"


class AlreadyExistsError(DestinationError):
    """A create-only write found the key already there: another writer committed first."""

    reason = "AlreadyCommitted"


class SchemaError(DsexportError):
    """The data holds a type or a value the output format cannot represent; the message names the column."""

    reason = "UnsupportedData"


class StateError(DsexportError):
    """What the destination holds cannot be trusted (a malformed, truncated or foreign ``_manifest.json``) or
    forbids this export (another DatasetExport's folder, a reset behind the latest commit); a person must look."""

    reason = "DestinationStateRefused"
