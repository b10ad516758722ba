#!/usr/bin/env bash
# Rebuild the embedded demo data with ganforge's own commands:
#   data/demo_data/cifar10-demo.tar.gz = the first 500 train and 100 test images of every
#   CIFAR-10 class, original 32x32 JPEG bytes, reproducible archive (same input -> same bytes).
# Usage: scripts/make_demo_data.sh [SOURCE_ARCHIVE]   (default: ../shared/datasets/cifar10-jpg.tar.gz)
set -euo pipefail
cd "$(dirname "$0")/.."
SRC="${1:-/work/shared/datasets/cifar10-jpg.tar.gz}"
OUT=data/demo_data/cifar10-demo.tar.gz
GANFORGE="${GANFORGE:-.venv/bin/ganforge}"
[ -x "$GANFORGE" ] || GANFORGE=ganforge
rm -f "$OUT"
"$GANFORGE" data subset "$SRC" "$OUT" --per-class train=500,test=100
# Check that it packs and verifies like any user dataset.
TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT
"$GANFORGE" data pack "$OUT" "$TMP/shards" --quiet
"$GANFORGE" data inspect "$TMP/shards"
sha256sum "$OUT"
