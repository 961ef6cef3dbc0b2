PYTHON ?= python
NVCC ?= nvcc

.PHONY: install test bench check-cuda check-wheel check-arm check-avx512 test-asan clean

# torch first: the CPU wheel on machines without a GPU. --no-build-isolation builds against that torch
# instead of pulling another one (with its CUDA wheels) into an isolated build environment.
install:
	$(PYTHON) -c "import torch" 2>/dev/null || $(PYTHON) -m pip install torch==2.13.0
	$(PYTHON) -m pip install -r requirements.txt
	$(PYTHON) -m pip install --no-build-isolation -e .

test: install
	$(PYTHON) -m pytest tests

bench: install
	$(PYTHON) -m bench
	$(PYTHON) -m bench.generate
	$(PYTHON) -m bench.speculative

# Compiles every CUDA source for sm_80 and sm_90; needs nvcc only (no GPU, no CUDA build of torch).
check-cuda:
	$(PYTHON) tools/check_cuda.py --nvcc $(NVCC)

# A wheel installed in a fresh venv works from outside the clone (tools/check_wheel.py; after `make install`
# it only relinks the extension, the objects come from build/temp).
check-wheel:
	$(PYTHON) tools/check_wheel.py

# Cross-compiles the CPU sources for aarch64 (compile only, against the installed torch's headers); needs
# g++-aarch64-linux-gnu (Debian/Ubuntu), no Arm machine. With qemu-aarch64 (qemu-user) it also runs the NEON
# loops on fixed inputs and compares them with the AVX2 ones (tools/vec_check.cpp).
AARCH64_CXX ?= aarch64-linux-gnu-g++
check-arm:
	$(PYTHON) tools/check_arm.py --cxx $(AARCH64_CXX)

# The AVX-512 path on any x86-64 (AVX2 + FMA to compare with): its loops over SIMDe's exact emulation of the
# intrinsics (pip install simde-py, a test-only dependency) print the same lines as the AVX2 loops
# (tools/vec_check.cpp), as do the NEON primitives over SIMDe's NEON, and the CPU kernel tests pass on an
# extension built with the emulated AVX-512 path (build/simde).
check-avx512:
	$(PYTHON) tools/check_avx512.py --tests

# The CPU extension built with ASan + UBSan (no recovery) into build/asan, and the CPU kernel tests run on it
# (tools/asan_test.sh says how: LD_PRELOADed runtimes, leak checks off for the interpreter).
test-asan:
	PYTHON=$(PYTHON) tools/asan_test.sh

clean:
	rm -rf build fastsample/_C*.so *.egg-info

# check-gpu: the CUDA units (check-cuda with ptxas -v) and every Triton kernel the launchers pick,
# compiled for sm_80 and sm_90 without a GPU; one table of registers, spills and shared memory.
# gpu-check: on a machine with a GPU, build for it, run the tests, compute-sanitizer and the GPU bench
# (make gpu-check OUT=dir QUICK=1). compat: CI's torch 2.11 + Triton 3.6 job in its own venv.
.PHONY: check-gpu gpu-check compat bench-distributed
check-gpu:
	$(PYTHON) tools/check_gpu.py --nvcc $(NVCC)

gpu-check:
	$(PYTHON) tools/gpu_check.py $(if $(OUT),--out $(OUT)) $(if $(QUICK),--quick)

compat:
	.ci/compat

# Vocab-parallel sampling over torch.distributed: 2 ranks (gloo on CPU, NCCL with >= 2 GPUs), V = 128256.
bench-distributed: install
	$(PYTHON) -m bench.distributed

# gpu-decoders: on a machine with a GPU, after gpu-check's build (or BUILD=1), every decoder on a random Llama
# vs HF generate, host syncs inside sampling, CUDA-graph replay, sampling's share of a step (issue 21).
.PHONY: gpu-decoders
gpu-decoders:
	$(PYTHON) tools/gpu_decoders.py --out $(or $(OUT),bench/results/gpu-decoders) $(if $(BUILD),--build)
