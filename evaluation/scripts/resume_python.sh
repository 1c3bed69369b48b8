#!/usr/bin/env bash
# A PYTHON for the result scripts that sends their `-m offrl.cli ...` call to resume_sweep.py (see its docstring)
# and anything else to the interpreter itself (RESUME_PYTHON, default python3, e.g. /path/to/.venv/bin/python).
if [ "$1" = "-m" ] && [ "$2" = "offrl.cli" ]; then
  shift 2
  exec "${RESUME_PYTHON:-python3}" "$(dirname "$0")/resume_sweep.py" "$@"
fi
exec "${RESUME_PYTHON:-python3}" "$@"
