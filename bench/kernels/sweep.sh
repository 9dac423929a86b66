#!/usr/bin/env bash
# Runs the decode-products benchmark under each setting of the few-row kernel's tuning variables
# (native/src/gemv.cu) and prints one step's products per setting, fastest first. Usage:
#   bench/kernels/sweep.sh [path/to/rankflow_bench_products] [file to write the fastest setting to]
set -euo pipefail
bench=${1:-build/native/rankflow_bench_products}
best_file=${2:-}
settings=(
  "RANKFLOW_GEMV_UNROLL=4"
  "RANKFLOW_GEMV_UNROLL=8"
  "RANKFLOW_GEMV_STAGED=1"
)
rows=()
for setting in "${settings[@]}"; do
  # the step's products at one row with programmatic launch: "| 1 | on | ms | floor | × |"
  ms=$(env $setting "$bench" | awk -F'|' '$2 ~ /^ 1 $/ && $3 ~ /on/ { gsub(/ /, "", $4); print $4 }')
  rows+=("$ms $setting")
done
printf '\nOne decode step'"'"'s products at one row, programmatic launch on, by setting\n| ms | setting |\n|---:|---|\n'
printf '%s\n' "${rows[@]}" | sort -n | while read -r ms setting; do printf '| %s | %s |\n' "$ms" "$setting"; done
if [ -n "$best_file" ]; then
  printf '%s\n' "${rows[@]}" | sort -n | head -1 | cut -d' ' -f2- >"$best_file"
fi
