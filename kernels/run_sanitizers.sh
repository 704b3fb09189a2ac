#!/usr/bin/env bash
# Runs the CPU rasterizer under memory checkers:
#  1. the edge-case driver (rasterize_edge_cases.cc) built with
#     AddressSanitizer + UndefinedBehaviorSanitizer;
#  2. the same driver, built plainly, under valgrind memcheck (if installed);
#  3. the FFI library built with AddressSanitizer, loaded into Python through
#     FACERECON_CPU_KERNEL, running the CPU-backend pytest cases
#     (skipped with --no-python).
# Usage: bash kernels/run_sanitizers.sh [--no-python]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON="${PYTHON:-$(if [ -x .venv/bin/python ]; then echo .venv/bin/python; else echo python3; fi)}"
CXX="${CXX:-g++}"
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT
flags=(-std=c++17 -O1 -g -ffp-contract=off -fno-omit-frame-pointer -Ikernels)

echo "== edge cases under AddressSanitizer + UndefinedBehaviorSanitizer"
"$CXX" "${flags[@]}" -fsanitize=address,undefined -fno-sanitize-recover=all \
  kernels/rasterize_edge_cases.cc -o "$out/edge_asan"
"$out/edge_asan"

if command -v valgrind >/dev/null; then
  echo "== edge cases under valgrind memcheck"
  "$CXX" "${flags[@]}" kernels/rasterize_edge_cases.cc -o "$out/edge_plain"
  valgrind --quiet --error-exitcode=1 --leak-check=full "$out/edge_plain"
else
  echo "== valgrind not installed: skipped"
fi

if [ "${1:-}" != "--no-python" ]; then
  echo "== the XLA FFI kernel under AddressSanitizer, through the pytest CPU cases"
  include="$("$PYTHON" -c 'import jax; print(jax.ffi.include_dir())')"
  "$CXX" "${flags[@]}" -shared -fPIC -fsanitize=address -w -I"$include" \
    kernels/rasterize_cpu.cc -o "$out/rasterize_asan.so"
  # Python is not instrumented: preload the runtime (and libstdc++, which
  # Python does not link, so ASan can intercept C++ throws), ignore leaks.
  FACERECON_CPU_KERNEL="$out/rasterize_asan.so" \
  LD_PRELOAD="$("$CXX" -print-file-name=libasan.so) $("$CXX" -print-file-name=libstdc++.so.6)" \
  ASAN_OPTIONS=detect_leaks=0:abort_on_error=1 \
    "$PYTHON" -m pytest -q -p no:xdist tests/test_render.py tests/test_render_backends.py \
      -k "cpu and not four_devices"
fi
echo "sanitizers: all passed"
