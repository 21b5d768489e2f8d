# glsnet-deploy: every target makes and fills its own virtual environment first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_OUT ?= demo-out
export GLSNET_DATA ?= $(if $(wildcard ../shared/data/deepglobe/*_sat.jpg),$(abspath ../shared/data/deepglobe),)

.PHONY: venv test test-fast demo bench gpu-check clean cpp

venv: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(BIN)/python -m pip install -q -e '.[cpu,train,dev,cluster,bench]'
	touch $(STAMP)

CPP_BUILD ?= build/cpp

# The C++ runtime (runtime/cpp): ORT headers from Debian trixie into the build folder, the venv's ORT library.
cpp: $(STAMP)
	bash runtime/cpp/build.sh $(CPP_BUILD) $(BIN)/python

test: $(STAMP) cpp
	$(BIN)/python -m pytest -q

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow and not integration"

demo: $(STAMP)
	bash scripts/demo.sh $(DEMO_OUT)

bench: $(STAMP) cpp
	$(BIN)/glsnet bench --out $(DEMO_OUT)/bench
	$(BIN)/python scripts/bench_cpp.py --cpp $(CPP_BUILD)/glsnet-cpp --out $(DEMO_OUT)/bench-cpp

# One prepared run (docs/gpu-check.md): one table of every engine this machine has (PyTorch on the
# stream scheduler and eager, ONNX Runtime CUDA, TensorRT) against the CPU fp32 reference; rows whose
# pieces are missing say why in one line. --level auto/tensorrt/cuda keep the older per-level checks. GPU_EXTRA: tensorrt
# (CUDA 12 driver), tensorrt-cu13 (CUDA 13 driver), jetson or cuda; an extra that cannot be
# installed here (no index, no wheel) is skipped and the check says what is missing.
GPU_EXTRA ?= tensorrt
gpu-check: $(STAMP)
	$(BIN)/python -m pip install -q -e '.[$(GPU_EXTRA)]' || echo "gpu-check: could not install the $(GPU_EXTRA) extra; checking with what is installed"
	$(BIN)/python -m export.gpu.gpu_check --level table --repeats 5 --out $(DEMO_OUT)/gpu-check

clean:
	rm -rf $(VENV) $(DEMO_OUT) .pytest_cache build/cpp build/cpp-asan
