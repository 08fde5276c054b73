"""Errors of registry transfers, each a kind of the shared hierarchy so the API maps them once."""

from __future__ import annotations

from hyperllama_common.errors import BackendFailed, InvalidRequest, ModelNotFound, Unavailable


class InsecureProtocol(InvalidRequest):
    """A plain-http registry was named without ``insecure``."""


class RegistryUnreachable(Unavailable):
    """The registry could not be reached (DNS, refused connection, timeouts) after the retries."""


class RegistryError(BackendFailed):
    """The registry answered, but not with what the distribution API promises."""


class RegistryUnauthorized(RegistryError):
    """The registry refused the credentials, or asked for a kind of auth we cannot give."""

    http_status = 401
    code = "unauthorized"


class DigestMismatch(RegistryError):
    """A downloaded blob's content does not match its digest; the data was deleted."""


class ManifestNotFound(ModelNotFound):
    """The registry has no such repository or tag."""
