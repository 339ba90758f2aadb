#!/usr/bin/env bash
# Build `imagine --features cuda` on a machine that has no GPU, no NVIDIA driver and no CUDA
# toolkit installed: the compiler, headers and libraries come from NVIDIA's PyPI wheels,
# installed with pip into a scratch folder. The result runs on a GPU host (see the end).
#
#   tools/build_cuda.sh [SCRATCH_DIR]
#
# SCRATCH_DIR   where the wheels go (default ${XDG_CACHE_HOME:-$HOME/.cache}/imagine-cuda).
#               A second run reuses it: pip runs again only if the pinned versions change.
# Environment:
#   CUDA_COMPUTE_CAP   GPU generation to compile the kernels for (default 90: H100/H200).
#                      There is no GPU here for nvidia-smi to ask. 90 compiles for sm_90a,
#                      which runs on compute capability 9.0 only; 80 gives PTX that the driver
#                      JIT-compiles on 8.0 and newer (A100, L4/L40, RTX 30/40, H100) at first
#                      use. 86 = RTX 30/A10, 89 = L4/L40/RTX 40, 120 = RTX 50.
#   CARGO_TARGET_DIR   default <repo>/target-cuda (kept apart from the CPU build's target/).
#   CARGO_BUILD_JOBS   passed on to cargo; also caps the parallel nvcc jobs.
#   PYTHON             the Python whose pip installs the wheels (default python3).
set -euo pipefail

# One CUDA release, pinned as a whole. Why 13.0 and not 12.x: NVIDIA's CUDA 12 wheels
# (nvidia-cuda-nvcc-cu12, every version up to 12.9.86) ship only `ptxas`, not the `nvcc`
# driver, `cicc` or `cudafe++`; the CUDA 13 wheels ship the whole compiler. These are the
# versions NVIDIA's own meta-package cuda-toolkit==13.0.2 pins. 13.0 rather than a later 13.x
# because the kernels are PTX that the GPU host's driver compiles: CUDA 13.0 needs driver
# R580 or newer, every later 13.x a newer driver still. cudarc 0.19 knows CUDA up to 13.4.
CUDA_RELEASE=13.0.2
# The libraries the binary needs at run time on the GPU host too.
RUNTIME_WHEELS=(
    nvidia-cuda-runtime==13.0.96 # libcudart (candle-kernels links it)
    nvidia-cublas==13.1.0.3      # libcublas, libcublasLt (candle's matmul)
    nvidia-curand==10.4.0.35     # libcurand (candle's random tensors)
)
BUILD_WHEELS=(
    nvidia-cuda-nvrtc==13.0.88 # cudarc asks for -lnvrtc; nothing uses it, so it is not kept
    nvidia-cuda-nvcc==13.0.88  # nvcc, ptxas, fatbinary, nvlink
    nvidia-nvvm==13.0.88       # cicc, libdevice (nvcc's device front end)
    nvidia-cuda-crt==13.0.88   # crt/ headers nvcc includes
    nvidia-cuda-cccl==13.0.85  # cub, thrust, libcu++ (candle-kernels' sort and MoE kernels)
)

die() {
    echo "build_cuda.sh: $*" >&2
    exit 1
}

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SCRATCH=${1:-${XDG_CACHE_HOME:-$HOME/.cache}/imagine-cuda}
PYTHON=${PYTHON:-python3}
export CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP:-90}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$REPO/target-cuda}

[[ $(uname -s) == Linux ]] || die "CUDA builds are Linux-only here (on macOS use --features metal)."
command -v cargo >/dev/null || die "cargo not found: install Rust from https://rustup.rs"
# nvcc hands host code to the system C++ compiler; the libcuda stub below needs cc too.
command -v g++ >/dev/null || die "g++ not found: install it (Debian/Ubuntu: apt-get install g++)."
command -v cc >/dev/null || die "cc not found: install gcc (Debian/Ubuntu: apt-get install gcc)."
"$PYTHON" -m pip --version >/dev/null 2>&1 ||
    die "'$PYTHON -m pip' does not work: install pip (apt-get install python3-pip) or set PYTHON."

# The wheels go into a folder named after the release, so changing the pins above installs
# afresh next to the old folder instead of mixing versions.
WHEELS_DIR=$SCRATCH/cuda-$CUDA_RELEASE
STAMP=$WHEELS_DIR/.installed
PINS=$(printf '%s\n' "${BUILD_WHEELS[@]}" "${RUNTIME_WHEELS[@]}" | sort)
if [[ -f $STAMP && $(cat "$STAMP") == "$PINS" ]]; then
    echo "==> CUDA $CUDA_RELEASE wheels already in $WHEELS_DIR"
else
    echo "==> Installing CUDA $CUDA_RELEASE wheels into $WHEELS_DIR (about 1.2 GB)"
    rm -rf "$WHEELS_DIR"
    mkdir -p "$WHEELS_DIR"
    "$PYTHON" -m pip install --disable-pip-version-check --no-warn-script-location \
        --target "$WHEELS_DIR" "${BUILD_WHEELS[@]}" "${RUNTIME_WHEELS[@]}" ||
        die "pip could not install the CUDA wheels (network? disk space?); rerun when fixed."
    echo "$PINS" >"$STAMP"
fi

# The CUDA 13 wheels all unpack into one toolkit-shaped tree: bin/ include/ lib/ nvvm/.
CUDA=$WHEELS_DIR/nvidia/cu13
[[ -x $CUDA/bin/nvcc ]] || die "$CUDA/bin/nvcc is missing: delete $WHEELS_DIR and rerun."

# The wheels ship only versioned libraries (libcublas.so.13); the linker's -lcublas wants
# libcublas.so. Link names next to them, as a toolkit install has.
for lib in cudart nvrtc cublas cublasLt curand; do
    versioned=
    for file in "$CUDA/lib/lib$lib.so."[0-9]*; do
        [[ -e $file ]] && versioned=${file##*/} && break
    done
    [[ -n $versioned ]] || die "lib$lib.so.* not found in $CUDA/lib: delete $WHEELS_DIR and rerun."
    ln -sfn "$versioned" "$CUDA/lib/lib$lib.so"
done

# libcuda.so is the driver and comes with it, never in a wheel. cudarc (as candle 0.11 uses it)
# links the driver API at build time (-lcuda), so the linker needs a library that defines its
# symbols. A toolkit install has lib64/stubs/libcuda.so for exactly this; we generate the same:
# an empty function for every cu* name in the wheel's cuda.h, soname libcuda.so.1 so that the
# binary asks for the real driver's name. It lives under lib/stubs, which is only a link-time
# search path: it is never on a run-time library path and never copied to the GPU host.
STUB=$CUDA/lib/stubs/libcuda.so
if [[ ! -f $STUB || $CUDA/include/cuda.h -nt $STUB ]]; then
    echo "==> Generating the link-time stub $STUB"
    mkdir -p "$CUDA/lib/stubs"
    # cudarc also binds cudaProfiler.h's three functions; that header is in a wheel we skip.
    {
        grep -ohE '\bcu[A-Z][A-Za-z0-9_]*' "$CUDA/include/cuda.h"
        printf '%s\n' cuProfilerInitialize cuProfilerStart cuProfilerStop
    } | sort -u | sed 's/.*/void &(void) {}/' >"$CUDA/lib/stubs/libcuda_stub.c"
    cc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$STUB" "$CUDA/lib/stubs/libcuda_stub.c"
fi

# What the crates' build scripts read: cudarc looks for link folders under CUDA_HOME/CUDA_PATH/
# CUDA_ROOT/CUDA_TOOLKIT_ROOT_DIR (lib/ and lib/stubs/ here) and asks `nvcc --version` for the
# CUDA version; cudaforge (candle-kernels' build script) runs $NVCC, which finds the headers in
# $CUDA/include and cicc in $CUDA/nvvm through its own nvcc.profile.
export CUDA_HOME=$CUDA CUDA_PATH=$CUDA CUDA_ROOT=$CUDA CUDA_TOOLKIT_ROOT_DIR=$CUDA
export NVCC=$CUDA/bin/nvcc
export PATH=$CUDA/bin:$PATH
# The linker resolves libcublas.so.13's own dependency (libcublasLt.so.13) through this.
export LD_LIBRARY_PATH=$CUDA/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
# cudaforge otherwise starts one nvcc per CPU, each using GBs of memory on the MoE kernels.
if [[ -n ${CARGO_BUILD_JOBS:-} ]]; then
    export CUDAFORGE_THREADS=${CUDAFORGE_THREADS:-$CARGO_BUILD_JOBS}
fi

echo "==> $("$NVCC" --version | tail -n 2 | head -n 1)"
echo "==> cargo build --release --features cuda --bin imagine (CUDA_COMPUTE_CAP=$CUDA_COMPUTE_CAP," \
    "target dir $CARGO_TARGET_DIR)"
cd "$REPO"
start=$SECONDS
cargo build --release -p imagine --features cuda --bin imagine
elapsed=$((SECONDS - start))

BIN=$CARGO_TARGET_DIR/release/imagine
[[ -x $BIN ]] || die "cargo finished but $BIN is missing."
needed=$(readelf -d "$BIN" | sed -n 's/.*Shared library: \[\(.*\)\]/\1/p' | tr '\n' ' ')

cat <<EOF

Built $BIN
  $(du -h "$BIN" | cut -f1), in ${elapsed}s; kernels for compute capability $CUDA_COMPUTE_CAP; CUDA $CUDA_RELEASE.
  Shared libraries it needs: $needed

It is linked against the driver (libcuda.so.1) and the CUDA libraries, so it starts only where
they are found, even with --device cpu: keep the CPU build for machines without a GPU.

To run it on a GPU host (Linux x86-64, NVIDIA driver R580 or newer, which provides
libcuda.so.1), copy the binary there and give it the CUDA $CUDA_RELEASE runtime libraries, either
from the same wheels:

  $PYTHON -m pip install --target ~/imagine-cuda-libs ${RUNTIME_WHEELS[*]}
  export LD_LIBRARY_PATH=~/imagine-cuda-libs/nvidia/cu13/lib

or by copying libcudart, libcublas, libcublasLt and libcurand from this machine's $CUDA/lib
(never its stubs/ folder), or from a CUDA 13 toolkit installed there. Then:

  ./imagine bot --device cuda     # or generate/bench --device cuda; --device auto, IMAGINE_DEVICE=cuda, device = "cuda" in TOML
EOF
