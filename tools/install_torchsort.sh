#!/usr/bin/env bash
# Build torchsort from source into the given virtual environment.
#
# torchsort's setup.py adds its CUDA kernel whenever `nvcc` runs, but linking that kernel needs
# the CUDA runtime library under torch's CUDA_HOME. Machines with an `nvcc` wrapper and no
# runtime fail at link time, so: build with CUDA only when the runtime is there, and fall back to
# the CPU kernel (nvcc hidden from PATH) if that build fails anyway.
set -euo pipefail
venv=${1:?usage: install_torchsort.sh VENV CONSTRAINTS}
constraints=${2:?usage: install_torchsort.sh VENV CONSTRAINTS}
pip=("$venv/bin/pip" install --no-build-isolation --no-deps -c "$constraints" torchsort)

cuda_usable() {
  "$venv/bin/python" - <<'PY' 2>/dev/null
import glob, os, shutil, sys
from torch.utils.cpp_extension import CUDA_HOME
ok = bool(shutil.which("nvcc") and CUDA_HOME and glob.glob(os.path.join(CUDA_HOME, "lib*", "libcudart.so*")))
sys.exit(0 if ok else 1)
PY
}

path_without_nvcc() {
  local dir out=()
  IFS=: read -ra dirs <<< "$PATH"
  for dir in "${dirs[@]}"; do [ -x "$dir/nvcc" ] || out+=("$dir"); done
  (IFS=:; echo "${out[*]}")
}

if cuda_usable && "${pip[@]}"; then
  echo "torchsort: built with its CUDA kernel"
else
  echo "torchsort: no usable CUDA toolkit, building the CPU kernel only"
  PATH=$(path_without_nvcc) "${pip[@]}"
fi
