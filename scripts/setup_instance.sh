#!/usr/bin/env bash
# Bootstrap a machine for spotrun (run by `fab setup` after the code is synced). Idempotent: a
# second run with the same requirements prints "already set up", checks again what can change on a
# machine (the GPU driver and torch's view of the GPU, where a GPU is required), and changes nothing.
#
#   setup_instance.sh REMOTE_DIR
#
# On the Deep Learning AMI: a venv in REMOTE_DIR/venv layered over the AMI's PyTorch environment
# (so the AMI's CUDA-matched torch is used as is), plus the project's runtime requirements pinned
# by requirements.lock (never torch, never dev tools). Current DLAMIs keep PyTorch in a venv of
# their own (/opt/pytorch). A venv made from inside another venv, even with
# --system-site-packages, sees only the *base interpreter's* site-packages, not that venv's: so
# ours names the AMI environment's site-packages in a .pth file, processed like a site dir
# (its own .pth files included), after our own site-packages.
#
# Environment:
#   SPOTRUN_SETUP_PYTHON  an existing python to use instead of building the venv (a stand-in
#                         environment, e.g. for tests or a machine you prepared yourself)
#   SPOTRUN_REQUIRE_GPU   1 (default): fail unless torch.cuda.is_available() and nvidia-smi work
#   SPOTRUN_BASE_PYTHONS  where to look for the AMI's PyTorch python, first match wins (default:
#                         /opt/pytorch/bin/python3 /opt/conda/envs/pytorch/bin/python3 python3)
set -euo pipefail

REMOTE_DIR=${1:?usage: setup_instance.sh REMOTE_DIR}
CODE="$REMOTE_DIR/code"
VENV="$REMOTE_DIR/venv"
LOCK="$CODE/requirements.lock"
REQUIRE_GPU=${SPOTRUN_REQUIRE_GPU:-1}
MARKER="$VENV/.spotrun-setup"
VERIFIED="$VENV/.spotrun-verified"  # what verify printed when the marker was written
# What the laptop-side tools need is not installed here (fabric, paramiko, moto, pytest, ruff).
BASE_PYTHONS=${SPOTRUN_BASE_PYTHONS:-/opt/pytorch/bin/python3 /opt/conda/envs/pytorch/bin/python3 python3}
# The AMI environment's site dirs, for our venv's .pth file (see above).
AMI_PTH="_spotrun_ami_env.pth"
RUNTIME="boto3 botocore s3fs aiobotocore fsspec h5py numpy pyyaml tqdm tensorboard matplotlib"

die() { echo "setup: $*" >&2; exit 1; }

[ -f "$LOCK" ] || die "$LOCK is missing; run \`fab sync\` first"

find_base_python() {
  # Newer DLAMIs keep PyTorch in /opt/pytorch; older ones in a conda env. Found, not imported:
  # verify imports it once, and a CUDA build's import costs seconds (more on a fresh EBS volume).
  for py in $BASE_PYTHONS; do
    if command -v "$py" >/dev/null 2>&1 \
      && "$py" -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('torch') is None)" 2>/dev/null; then
      echo "$py"; return 0
    fi
  done
  return 1
}

inputs_hash() {
  { cat "$LOCK" "$0"; echo "python=${SPOTRUN_SETUP_PYTHON:-} bases=$BASE_PYTHONS"; } | sha256sum | cut -d' ' -f1
}

ensure_tools() {
  # fab train runs in tmux and fab sync needs rsync on this side too; the DLAMI has both, a lab
  # machine or a minimal image may not.
  local missing=() t
  for t in tmux rsync; do command -v "$t" >/dev/null 2>&1 || missing+=("$t"); done
  [ ${#missing[@]} -eq 0 ] && return 0
  echo "installing ${missing[*]} (apt-get)"
  local sudo=""
  [ "$(id -u)" = 0 ] || sudo="sudo -n"
  { $sudo apt-get install -y -qq "${missing[@]}" >/dev/null 2>&1 \
    || { $sudo apt-get update -qq >/dev/null 2>&1 && $sudo apt-get install -y -qq "${missing[@]}" >/dev/null; }; } \
    || die "${missing[*]} missing and could not be installed; install them on the machine (sudo apt-get install ${missing[*]}) and rerun \`fab setup\`"
  for t in "${missing[@]}"; do command -v "$t" >/dev/null 2>&1 || die "$t still missing after apt-get; install it by hand"; done
}

layer_over_base() {
  # Our venv's python is the base interpreter underneath the AMI's venv; the AMI venv's own
  # site-packages (torch) must be named explicitly. site.addsitedir also runs the .pth files there.
  local own dirs
  own=$("$VENV/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
  dirs=$("$BASE" -c "import site; print(repr(site.getsitepackages()))")
  printf 'import site; list(map(site.addsitedir, %s))\n' "$dirs" > "$own/$AMI_PTH"
}

verify() {
  # The driver first (no python needed), then one torch import that reports and checks the GPU.
  local py="$VENV/bin/python"
  if [ "$REQUIRE_GPU" = "1" ]; then
    command -v nvidia-smi >/dev/null || die "nvidia-smi not found: is this a GPU instance on a DLAMI?"
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader \
      || die "nvidia-smi failed: the NVIDIA driver is not loaded (try rebooting the instance)"
  fi
  local status=0
  SPOTRUN_REQUIRE_GPU="$REQUIRE_GPU" "$py" - <<'PY' || status=$?
import os
import platform
try:
    import torch
except ImportError:
    raise SystemExit("setup: torch is not importable in the venv; rerun `fab setup`")
print(f"python {platform.python_version()}  torch {torch.__version__}  "
      f"cuda available: {torch.cuda.is_available()}  cuda {torch.version.cuda}")
if os.environ["SPOTRUN_REQUIRE_GPU"] == "1" and not torch.cuda.is_available():
    raise SystemExit(3)
PY
  [ "$status" -eq 3 ] && die "torch.cuda.is_available() is False: the AMI's torch does not see the GPU"
  [ "$status" -eq 0 ] || exit "$status"
}

HASH=$(inputs_hash)
if [ -f "$MARKER" ] && [ "$(cat "$MARKER")" = "$HASH" ] && [ -x "$VENV/bin/python" ]; then
  echo "already set up ($VENV)"
  if [ "$REQUIRE_GPU" = "1" ] || [ ! -f "$VERIFIED" ]; then
    verify  # the driver, and torch's view of the GPU, can change with a reboot: checked again
  else
    # Nothing torch needs has changed since it was imported for the marker (the hash covers the
    # lock and this script): the interpreter still runs, and the versions checked then are shown.
    "$VENV/bin/python" -c "" || die "$VENV/bin/python does not run; rerun \`fab setup\` after deleting $VENV"
    cat "$VERIFIED"
  fi
  exit 0
fi

mkdir -p "$REMOTE_DIR/runs"
ensure_tools
if [ -n "${SPOTRUN_SETUP_PYTHON:-}" ]; then
  "$SPOTRUN_SETUP_PYTHON" -c "import sys" || die "SPOTRUN_SETUP_PYTHON=$SPOTRUN_SETUP_PYTHON does not run"
  echo "using the stand-in python $SPOTRUN_SETUP_PYTHON"
  rm -rf "$VENV"
  mkdir -p "$VENV/bin"
  # A wrapper, not a symlink: a symlinked venv python would lose its own site-packages.
  printf '#!/bin/sh\nexec %q "$@"\n' "$SPOTRUN_SETUP_PYTHON" > "$VENV/bin/python"
  chmod +x "$VENV/bin/python"
else
  BASE=$(find_base_python) || die "no python with torch found (expected the Deep Learning AMI's PyTorch)"
  echo "base python: $BASE"
  [ -x "$VENV/bin/python" ] || "$BASE" -m venv --system-site-packages "$VENV"
  layer_over_base
  # Constraints: the lock without torch and its CUDA wheels (the AMI's own build is kept).
  grep -viE '^(torch|triton|nvidia-)' "$LOCK" > "$VENV/constraints.txt"
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
    -c "$VENV/constraints.txt" $RUNTIME
fi

verify | tee "$VERIFIED.tmp"
mv "$VERIFIED.tmp" "$VERIFIED"
echo "$HASH" > "$MARKER"
echo "set up: $VENV"
