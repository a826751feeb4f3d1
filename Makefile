# Two commands on a fresh machine (Python 3.11, no GPU): `make demo` and `make test`.
# Both create .venv on first use and install what they need. torch is pinned to 2.13.0, as
# pip resolves it for the platform: on Linux, PyPI's is the CUDA build (several GB); for the
# CPU build set TORCH_INDEX=https://download.pytorch.org/whl/cpu (or have a local CPU wheel in
# pip's find-links); on a machine that already has a CUDA torch, set TORCH_SPEC="" to keep it.
# triton 3.8.0 runs the Triton kernels' tests in its interpreter on CPU (3.6's interpreter
# breaks with numpy 2); on a GPU machine set TRITON_SPEC="" to keep its own triton.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_SPEC ?= torch==2.13.0
TORCH_INDEX ?=
TRITON_SPEC ?= triton==3.8.0
STAMP := $(VENV)/.installed

.PHONY: demo test install clean

# The install also compiles the C++ extension exvae_fast._C from csrc/ (against the torch
# installed first: --no-build-isolation), so a change there reinstalls too.
$(STAMP): pyproject.toml setup.py $(wildcard csrc/*)
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check --upgrade "pip>=23" "setuptools>=64" wheel
	$(if $(TORCH_SPEC),$(PY) -m pip install --quiet --disable-pip-version-check $(if $(TORCH_INDEX),--index-url "$(TORCH_INDEX)") "$(TORCH_SPEC)")
	$(if $(TRITON_SPEC),$(PY) -m pip install --quiet --disable-pip-version-check "$(TRITON_SPEC)")
	$(PY) -m pip install --quiet --disable-pip-version-check --no-build-isolation -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

# Train an Exemplar VAE (retrieval mode) on the embedded mnist-5k digits, evaluate it and
# write runs/mnist-5k-demo/ (checkpoints, metrics.json, loss_curve.png, samples.png,
# exemplar_samples.png).
demo: $(STAMP)
	$(PY) -m exvae_fast train --config configs/mnist-5k-demo.toml --overwrite

test: $(STAMP)
	$(PY) -m pytest -q

clean:
	rm -rf $(VENV) build *.egg-info runs
