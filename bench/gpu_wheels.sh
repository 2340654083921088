#!/usr/bin/env bash
# Fetch, into .whl/ (git-ignored), the wheels that a GPU machine's image lacks for
# bench/gpu_check.sh: lmforge's `lm` library needs pydantic beside torch and numpy, which such
# images already hold. The versions are this checkout's .venv's; the platform is the GPU image's
# (CPython 3.12, x86-64 Linux). Run it here, where the registries are reachable, before carrying
# .whl to the GPU machine.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-.venv/bin/python}
pins=$("$python" - <<'PY'
from importlib.metadata import version
names = ["pydantic", "pydantic_core", "annotated-types", "typing-inspection", "typing_extensions"]
print(" ".join(f"{name}=={version(name)}" for name in names))
PY
)
# Into a fresh folder first: a failed download leaves the wheels fetched before in place.
rm -rf .whl.partial
# shellcheck disable=SC2086  # one argument per pin
"$python" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d .whl.partial $pins
rm -rf .whl
mv .whl.partial .whl
ls -1 .whl
