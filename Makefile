PYTHON ?= python
NVCC ?= nvcc

.PHONY: install test bench check-cuda clean test-asan

# torch first: the CPU wheel on machines without a GPU. --no-build-isolation builds against that torch
# instead of pulling another one (with its CUDA wheels) into an isolated build environment.
install:
	$(PYTHON) -c "import torch" 2>/dev/null || $(PYTHON) -m pip install torch==2.13.0
	$(PYTHON) -m pip install -r requirements.txt
	$(PYTHON) -m pip install --no-build-isolation -e .

test: install
	$(PYTHON) -m pytest tests

bench: install
	$(PYTHON) -m fastsample bench

# Compiles every CUDA source for sm_80 and sm_90; needs nvcc only (no GPU, no CUDA build of torch).
check-cuda:
	$(PYTHON) tools/check_cuda.py --nvcc $(NVCC)

# The CPU extension built with ASan + UBSan (no recovery) into build/asan, and the CPU kernel tests run on it
# (tools/asan_test.sh says how: LD_PRELOADed runtimes, leak checks off for the interpreter).
test-asan:
	PYTHON=$(PYTHON) tools/asan_test.sh

clean:
	rm -rf build fastsample/_C*.so *.egg-info
