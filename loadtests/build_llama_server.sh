#!/usr/bin/env bash
# Builds llama.cpp's own llama-server from the llama.cpp source vendored in the pinned llama-cpp-python
# sdist, with the same CPU flags as the worker's build, so the benchmark compares like with like.
# Usage: loadtests/build_llama_server.sh VERSION "CMAKE ARGS" OUT_DIR PIP
set -euo pipefail
version=$1 cmake_args=$2 out=$3 pip=$4
work="$out/src"
mkdir -p "$work"
if [ ! -d "$work/llama_cpp_python-$version" ]; then
  "$pip" download --quiet --no-binary :all: --no-deps "llama-cpp-python==$version" -d "$work"
  tar -xzf "$work/llama_cpp_python-$version.tar.gz" -C "$work"
fi
src="$work/llama_cpp_python-$version/vendor/llama.cpp"
# shellcheck disable=SC2086
cmake -S "$src" -B "$out/cmake" -DCMAKE_BUILD_TYPE=Release -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF \
  -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=ON -DBUILD_SHARED_LIBS=OFF $cmake_args >/dev/null
cmake --build "$out/cmake" --target llama-server -j "$(nproc)" >/dev/null
cp "$out/cmake/bin/llama-server" "$out/llama-server"
echo "built $out/llama-server"
