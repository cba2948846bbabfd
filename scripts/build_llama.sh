#!/usr/bin/env bash
# Build llama-cpp-python once per machine, portably, and install it into the given venv.
#
# Why not a plain `pip install`: pip compiles llama.cpp with -march=native, and on CPUs
# with AMX (Intel Sapphire Rapids and later) that build crashes with a segmentation fault
# in ggml's AMX matrix multiply on the first generated token (seen with
# llama-cpp-python 0.3.36 and the SmolLM2 Q4_1 GGUF). We build for AVX2/FMA/F16C instead,
# which runs on any x86-64 CPU of the last decade, and keep the wheel under a cache dir
# keyed by version and flags, because pip's own wheel cache ignores CMAKE_ARGS and would
# hand back a native build.
#
# Only what the binding loads is built: libllama and libggml*. llama.cpp's common library
# (with its vendored HTTP client, about half the compile time) is turned off through
# scripts/llama_slim.cmake, and the multimodal projector (libmtmd, which only llama-cpp-python's
# image chat handlers load; triagegate's llama.cpp backend sends no images) through
# LLAVA_BUILD=OFF. bench/RESULTS.md ("Setup time (issue 16)") has the build times.
#
# Usage: scripts/build_llama.sh VENV_PYTHON
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

python="$1"
version="${LLAMA_CPP_VERSION:-0.3.36}"
arch="$(uname -m)"
if [[ "$arch" == "x86_64" ]]; then
  default="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON"
  # AVX-512 where the CPU has it (about a third faster here); AMX stays off either way.
  if grep -qw avx512f /proc/cpuinfo && grep -qw avx512bw /proc/cpuinfo && grep -qw avx512vl /proc/cpuinfo; then
    default="$default -DGGML_AVX512=ON"
    grep -qw avx512_vnni /proc/cpuinfo && default="$default -DGGML_AVX512_VNNI=ON"
    grep -qw avx512vbmi /proc/cpuinfo && default="$default -DGGML_AVX512_VBMI=ON"
    grep -qw avx512_bf16 /proc/cpuinfo && default="$default -DGGML_AVX512_BF16=ON"
  fi
  cmake_args="${LLAMA_CMAKE_ARGS:-$default}"
else
  cmake_args="${LLAMA_CMAKE_ARGS:-}"
fi
slim="-DLLAVA_BUILD=OFF"
# The tag names what is built (version, CPU flags, targets), not where this checkout lives.
tag="$(printf '%s %s %s %s %s' "$version" "$arch" "$cmake_args" "$slim" "$(sha256sum < "$here/llama_slim.cmake")" | sha256sum | cut -c1-12)"
slim="$slim -DCMAKE_PROJECT_llama.cpp_INCLUDE=$here/llama_slim.cmake"
cache="${XDG_CACHE_HOME:-$HOME/.cache}/triagegate/wheels/llama-cpp-python-$version-$tag"

marker="$("$python" -c 'import sys; print(sys.prefix)')/.llama-cpp-python-$tag"
if [[ -f "$marker" ]] && "$python" -c "import importlib.metadata as m, sys; sys.exit(m.version('llama-cpp-python') != '$version')" 2>/dev/null; then
  exit 0
fi

if ! ls "$cache"/llama_cpp_python-*.whl >/dev/null 2>&1; then
  echo ">>> Building llama-cpp-python $version from source ($cmake_args), the library only: this takes about 2 minutes on a quiet 2-core machine, once per machine."
  mkdir -p "$cache"
  CMAKE_ARGS="$cmake_args $slim" "$python" -m pip wheel --quiet --no-deps --no-cache-dir \
    "llama-cpp-python==$version" -w "$cache"
fi
"$python" -m pip install --quiet --force-reinstall --no-deps "$cache"/llama_cpp_python-*.whl
touch "$marker"
