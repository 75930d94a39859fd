# razor: two commands do all the set-up on a fresh machine.
#   make demo   install, then run the main job on this machine (no cluster needed)
#   make test   install, then run every test
# Both are idempotent: the virtual environment is .venv and is rebuilt only when
# pyproject.toml changes.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.razor-installed
PYTEST_ARGS ?=

.PHONY: install k8s-binaries helm-binary slurm-cluster images-tools demo test test-local bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV) || { \
	  echo "python3 -m venv failed: installing Debian's python3-venv"; \
	  apt-get update -qq && apt-get install -y -qq python3-venv && $(PYTHON) -m venv $(VENV); }
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[trainer,operator,test]'
	@touch $(STAMP)

# etcd, kube-apiserver, kube-controller-manager and kubectl built from the upstream Go
# modules, cached by version in ~/.cache/razor/k8s (the first build takes a while).
k8s-binaries:
	@scripts/k8s-binaries.sh >/dev/null

# helm v3 built from the Go module proxy, cached in ~/.cache/razor/helm.
helm-binary:
	@scripts/helm-binary.sh >/dev/null

# Debian's slurm-wlm and munge, configured for this host and started (scripts/slurm-setup.sh).
slurm-cluster:
	@scripts/slurm-setup.sh >/dev/null

# podman, runc and debootstrap (Debian packages), and the base image localhost/razor-base
# debootstrapped once and cached in ~/.cache/razor/images (scripts/image-base.sh).
images-tools:
	@scripts/image-base.sh >/dev/null

demo: install
	$(VENV)/bin/razorctl submit --local examples/razorjob-digits-kd.yaml

test: install k8s-binaries helm-binary slurm-cluster images-tools
	$(PY) -m pytest $(PYTEST_ARGS)

test-local: install
	$(PY) -m pytest -m local $(PYTEST_ARGS)

bench: install
	$(PY) benchmarks/run.py --write

clean:
	rm -rf work_dirs .pytest_cache
