from pathlib import Path

from pydantic import AliasChoices, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from hyperllama_store.registry import Credential, parse_credentials


class StoreSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="HYPERLLAMA_STORE_", populate_by_name=True)

    host: str = "127.0.0.1"
    port: int = 11435
    # The whole cluster shares HYPERLLAMA_MODELS (as Ollama has OLLAMA_MODELS); an Ollama folder works as is.
    models: Path = Field(
        default=Path("~/.hyperllama/models"),
        validation_alias=AliasChoices("HYPERLLAMA_MODELS", "HYPERLLAMA_STORE_MODELS"),
    )
    # Most bytes the blobs may take; 0 means no limit. An upload that would pass it is refused (413).
    quota_bytes: int = Field(default=0, ge=0)
    # Import the bundled smollm2:135m on start when it is not in the store yet.
    import_bundled: bool = True
    # Credentials per registry host, as JSON: {"host[:port]": {"username", "password"} | {"token"}}; or a
    # file holding that JSON (a mounted secret). Never logged: SecretStr keeps it out of reprs.
    registry_auth: SecretStr = SecretStr("")
    registry_auth_file: Path | None = None
    # Downloads: ranged parts of this size, this many in flight per blob.
    pull_part_bytes: int = Field(default=64 * 1024 * 1024, gt=0)
    pull_concurrency: int = Field(default=8, gt=0)
    log_level: str = "INFO"
    log_json: bool = False

    @property
    def root(self) -> Path:
        return self.models.expanduser()

    def registry_credentials(self) -> dict[str, Credential]:
        """Both sources merged (the inline JSON wins for a host named in both). Raises ValueError naming the
        source, never a secret."""
        result: dict[str, Credential] = {}
        if self.registry_auth_file is not None:
            path = self.registry_auth_file.expanduser()
            try:
                text = path.read_text()
            except OSError as err:
                raise ValueError(f"cannot read registry credentials from {path}: {err.strerror}") from None
            result.update(parse_credentials(text))
        result.update(parse_credentials(self.registry_auth.get_secret_value()))
        return result
