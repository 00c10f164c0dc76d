#!/usr/bin/env bash
# One entry point for a fresh machine:
#   bash run.sh demo   -> set up .venv (runtime requirements) and run the demo (the main job on the embedded default)
#   bash run.sh test   -> set up .venv (runtime + dev requirements) and run the whole test suite
# Re-running is quick: pip is skipped while the requirement files are unchanged (a stamp in .venv records them).
set -euo pipefail
cd "$(dirname "$0")"
what="${1:-}"
shift || true
case "$what" in
  demo) reqs=(requirements.txt) ;;
  test) reqs=(requirements.txt requirements-dev.txt) ;;
  *) echo "usage: bash run.sh demo|test [extra arguments]" >&2; exit 2 ;;
esac

PYTHON="${PYTHON:-$(command -v python3.11 || command -v python3)}"
if [ ! -x .venv/bin/python ]; then
  echo "[setup] creating .venv with $($PYTHON --version 2>&1)"
  "$PYTHON" -m venv .venv
fi
stamp_file=".venv/.requirements-${what}.sha256"
stamp="$(cat "${reqs[@]}" | sha256sum | cut -d' ' -f1)"
if [ ! -f "$stamp_file" ] || [ "$(cat "$stamp_file")" != "$stamp" ]; then
  echo "[setup] installing ${reqs[*]} into .venv (first time: several minutes, torch is large)"
  args=()
  for r in "${reqs[@]}"; do args+=(-r "$r"); done
  # Some machines' pip configuration names local package folders that do not exist; hide those warnings only.
  set +e
  { .venv/bin/python -m pip install --quiet --upgrade pip && .venv/bin/python -m pip install --quiet "${args[@]}"; } \
    2>&1 | grep -v "is ignored: it is neither a file nor a directory"
  status=${PIPESTATUS[0]}
  set -e
  if [ "$status" -ne 0 ]; then echo "[setup] pip install failed (exit $status)" >&2; exit "$status"; fi
  echo "$stamp" > "$stamp_file"
else
  echo "[setup] .venv is up to date"
fi

case "$what" in
  demo) exec .venv/bin/python demo.py "$@" ;;
  test) exec .venv/bin/python -m pytest -q "$@" ;;
esac
