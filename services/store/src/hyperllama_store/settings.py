from pathlib import Path

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict


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
    log_level: str = "INFO"
    log_json: bool = False

    @property
    def root(self) -> Path:
        return self.models.expanduser()
