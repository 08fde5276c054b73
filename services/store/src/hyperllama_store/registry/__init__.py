"""Pull and push over the OCI distribution API (Ollama's registry, plain OCI registries, Hugging Face)."""

from .auth import Credential, parse_credentials
from .client import RegistryClient, RetryPolicy, resolve
from .download import DownloadOptions, Downloads
from .errors import (
    DigestMismatch,
    InsecureProtocol,
    ManifestNotFound,
    RegistryError,
    RegistryUnauthorized,
    RegistryUnreachable,
)
from .manifest import Layer, Manifest, parse_manifest
from .push import UploadOptions
from .transfers import Transfers

__all__ = [
    "Credential",
    "DigestMismatch",
    "DownloadOptions",
    "Downloads",
    "InsecureProtocol",
    "Layer",
    "Manifest",
    "ManifestNotFound",
    "RegistryClient",
    "RegistryError",
    "RegistryUnauthorized",
    "RegistryUnreachable",
    "RetryPolicy",
    "Transfers",
    "UploadOptions",
    "parse_credentials",
    "parse_manifest",
    "resolve",
]
