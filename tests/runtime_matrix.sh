#!/usr/bin/env bash
# The runtime-dependent tests under every runtime/precision setting and as every CPU kind
# seen on our machines, whatever CPU runs this (`make test` calls it after the full suite).
# POLYPINDEX_CPU_FLAGS stands in for /proc/cpuinfo's flags (polypindex.model.runtime.loader).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
TESTS=(
  tests/test_runtime_identity.py
  tests/test_end_to_end.py
  tests/probes
  tests/indexer/test_grouping_store.py
  tests/indexer/test_cli_store.py
  tests/model/test_runtime_backends.py
)
SETTINGS=(
  "onnxruntime-fp32|POLYPINDEX_RUNTIME=onnxruntime|POLYPINDEX_PRECISION=fp32"
  "openvino-fp32|POLYPINDEX_RUNTIME=openvino|POLYPINDEX_PRECISION=fp32"
  "openvino-bf16|POLYPINDEX_RUNTIME=openvino|POLYPINDEX_PRECISION=bf16"
  "cpu-avx2|POLYPINDEX_CPU_FLAGS=fpu sse4_2 avx avx2 fma"
  "cpu-avx512-bf16|POLYPINDEX_CPU_FLAGS=avx2 avx512f avx512bw avx512_bf16 avx512_vnni"
  "cpu-amx|POLYPINDEX_CPU_FLAGS=avx2 avx512f avx512_bf16 amx_bf16 amx_tile amx_int8"
)
for setting in "${SETTINGS[@]}"; do
  IFS='|' read -r -a parts <<<"$setting"
  name=${parts[0]}
  vars=("${parts[@]:1}")
  echo "== runtime matrix: $name (${vars[*]})"
  env "${vars[@]}" "$PYTHON" -m pytest -q -p no:cacheprovider "${TESTS[@]}"
done
