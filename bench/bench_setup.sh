#!/usr/bin/env bash
# Time `make demo` from a fresh clone, three ways (issue 16, "Setup time"):
#
#   1. a new clone with every cache empty: venv, pip's downloads, the llama.cpp wheel
#      (scripts/build_llama.sh) and the trained classifier;
#   2. another new clone with pip's cache and the model cache emptied, the wheel cache kept
#      (a second checkout on a machine that has built once);
#   3. the second clone again (make finds the install done: the demo alone).
#
# The caches live under a scratch XDG_CACHE_HOME, so ~/.cache and the checkout's own .venv are
# never touched. Prints each run's wall time and the load average, and writes
# bench/out/setup.json. Wall times depend on the machine's load: read them beside the load.
#
# Usage: bench/bench_setup.sh [REPO]   (default: this checkout's committed HEAD)
set -euo pipefail
repo="$(cd "${1:-$(dirname "${BASH_SOURCE[0]}")/..}" && pwd)"
work="$(mktemp -d "${TMPDIR:-/tmp}/triagegate-setup.XXXXXX")"
trap 'rm -rf "$work"' EXIT
export XDG_CACHE_HOME="$work/cache"
out="$repo/bench/out/setup.json"
mkdir -p "$(dirname "$out")" "$XDG_CACHE_HOME"

clone() {
  rm -rf "$work/checkout"
  git clone --quiet "$repo" "$work/checkout"
  # Tests and benches look for the owners' data beside the checkout; the demo does not.
  [[ -e "$repo/../shared" ]] && ln -sfn "$(cd "$repo/.." && pwd)/shared" "$work/shared"
}

runs=()
run() {
  local name="$1" started ended wall load
  started="$(date +%s.%N)"
  (cd "$work/checkout" && make demo) >"$work/$name.log" 2>&1 || {
    echo "make demo failed in run $name; its output:" >&2
    tail -40 "$work/$name.log" >&2
    exit 1
  }
  ended="$(date +%s.%N)"
  wall="$(echo "$ended - $started" | bc)"
  load="$(cut -d' ' -f1 /proc/loadavg)"
  printf '%-28s %7.1f s   load %s   %s\n' "$name" "$wall" "$load" \
    "$(grep -o 'models built.*' "$work/$name.log" | tail -1)"
  runs+=("{\"run\": \"$name\", \"wall_s\": $wall, \"load_1min\": $load}")
}

clone
run "1-fresh-all-caches-empty"
clone
rm -rf "$XDG_CACHE_HOME/pip" "$XDG_CACHE_HOME/triagegate/classifiers"
run "2-new-clone-wheel-cached"
run "3-rerun-same-clone"

commit="$(git -C "$repo" rev-parse --short HEAD)"
printf '{"commit": "%s", "cpus": %s, "runs": [%s]}\n' "$commit" "$(nproc)" "$(IFS=,; echo "${runs[*]}")" >"$out"
echo "wrote $out"
