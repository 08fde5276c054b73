"""Small pure pieces of the llama.cpp worker."""

from hyperllama.worker.v1 import worker_pb2
from hyperllama_common.hf_files import human_parameter_count
from hyperllama_worker_llamacpp.main import parse_cpus
from hyperllama_worker_llamacpp.registry import load_registry, normalize_name, select
from hyperllama_worker_llamacpp.service import merge_chunks


def test_parse_cpus():
    assert parse_cpus("0-3,6") == {0, 1, 2, 3, 6}
    assert parse_cpus("1") == {1}
    assert parse_cpus("") == set()


def test_parameter_count_is_printed_like_ollama():
    assert human_parameter_count(134_515_008) == "134.52M"
    assert human_parameter_count(7_000_000_000) == "7B"


def test_names_without_tag_mean_latest():
    assert normalize_name("llama3") == "llama3:latest"
    assert normalize_name("smollm2:135m") == "smollm2:135m"


def test_default_model_is_found_in_the_wheel_without_configuration():
    registry = load_registry("")
    spec = select(registry, "smollm2:135m")[0]
    assert spec.path.name.endswith(".gguf") and spec.path.stat().st_size > 50_000_000


def test_registry_file_adds_models(tmp_path):
    weights = tmp_path / "tiny.gguf"
    weights.write_bytes(b"GGUF")
    config = tmp_path / "models.toml"
    config.write_text(f'[models.tiny]\npath = "{weights}"\n[models.tiny.options]\ntemperature = 0.3\n')
    registry = load_registry(str(config))
    assert registry["tiny:latest"].options == {"temperature": 0.3}
    try:
        select(registry, "missing:1")
    except ValueError as err:
        assert "missing:1" in str(err) and "tiny:latest" in str(err)
    else:
        raise AssertionError("an unknown model must be refused")


def test_merge_chunks_keeps_final_fields():
    a = worker_pb2.GenerateChunk(text="Hel", token_count=1)
    b = worker_pb2.GenerateChunk(
        text="lo",
        token_count=1,
        finish_reason=worker_pb2.FINISH_REASON_STOP,
        usage=worker_pb2.Usage(prompt_tokens=3, completion_tokens=2),
    )
    merged = merge_chunks([a, b])
    assert merged.text == "Hello" and merged.token_count == 2
    assert merged.finish_reason == worker_pb2.FINISH_REASON_STOP and merged.usage.completion_tokens == 2
