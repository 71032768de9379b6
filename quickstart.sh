#!/usr/bin/env bash
# Install MiniMind's dependencies if they are missing, then run the whole pipeline on this CPU.
#   bash quickstart.sh [--fast] [--mirror DIR]       (MINIMIND_MIRROR=DIR works too)
set -euo pipefail
cd "$(dirname "$0")"
if ! python -c "import torch, transformers, tokenizers, peft, trl, pandas, flask, waitress, gguf, yaml, opencc" 2>/dev/null; then
  echo "installing dependencies (torch 2.13.0 CPU build, then requirements.txt)"
  python -m pip install -q torch==2.13.0 -r requirements.txt
fi
exec python quickstart.py "$@"
