#!/usr/bin/env bash
# Create .venv/ at the repo root and install pspnet into it (idempotent).
#
#   bash scripts/setup.sh          # pspnet + the `report` extra (matplotlib: charts, reports)
#   bash scripts/setup.sh dev      # + the test and optional-feature extras
#   bash scripts/setup.sh serve    # any extras, comma-separated; `report` is always added
#
# torch is installed first, pinned to 2.13.0, so that installing pspnet never replaces it. Which
# build that pin brings depends on where pip looks (see README, "Installing torch"):
#   PSPNET_TORCH unset   `torch==2.13.0` from pip's configured indexes: on PyPI that is the CUDA
#                        build on Linux x86-64 (several GB) and the CPU build on macOS/Windows; a
#                        machine whose pip is configured with a local wheel gets that wheel.
#   PSPNET_TORCH=cpu     the CPU-only build, from https://download.pytorch.org/whl/cpu
#   PSPNET_TORCH=cu126   a CUDA build (cu118, cu126, ...: the index of https://pytorch.org)
#   PSPNET_TORCH=keep    leave the torch that .venv already has (or install none)
set -euo pipefail
cd "$(dirname "$0")/.."
extras="report${1:+,$1}"
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
case "${PSPNET_TORCH:-}" in
  "") .venv/bin/python -m pip install -q "torch==2.13.0" ;;
  keep) ;;
  cpu|cu*) .venv/bin/python -m pip install -q "torch==2.13.0" \
             --index-url "https://download.pytorch.org/whl/${PSPNET_TORCH}" ;;
  *) echo "PSPNET_TORCH=${PSPNET_TORCH}: use cpu, cu126 (a CUDA index name), keep, or leave it" \
          "unset" >&2; exit 2 ;;
esac
.venv/bin/python -m pip install -q -e ".[$extras]"
