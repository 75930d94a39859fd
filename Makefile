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

.PHONY: install k8s-binaries helm-binary slurm-cluster images-tools node-tools images push-images demo test test-local bench clean

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

# What the test cluster's real node needs besides kubelet and kube-proxy: Debian's containerd,
# runc, CNI plugins, iptables, conntrack; CoreDNS built from its Go module and the pod sandbox
# image, cached in ~/.cache/razor/node (scripts/node-tools.sh).
node-tools:
	@scripts/node-tools.sh >/dev/null

# The container images for a real cluster (images/README.md): the operator, the trainer (CUDA)
# and its CPU variant, tagged $(IMAGE_REPO)/razor-operator:$(VERSION),
# $(IMAGE_REPO)/razor-trainer:$(VERSION) and $(IMAGE_REPO)/razor-trainer:$(VERSION)-cpu (no
# IMAGE_REPO: razor-operator:$(VERSION) and so on, the names the chart and razor/spec.py use).
# podman when present, else docker; ENGINE=docker picks one. WHEELS=DIR builds from a wheelhouse
# (scripts/image-wheels.sh); IMAGE_BUILD_FLAGS adds flags (e.g. --isolation chroot).
# `make push-images IMAGE_REPO=registry.example.com/team` pushes the three.
IMAGE_REPO ?=
VERSION    ?= $(shell sed -n 's/^version *= *"\(.*\)"/\1/p' pyproject.toml)
ENGINE     ?= $(shell command -v podman >/dev/null 2>&1 && echo podman || echo docker)
CPU_BASE_IMAGE ?= debian:bookworm-20250520-slim
WHEELS     ?=
IMAGE_PREFIX := $(if $(IMAGE_REPO),$(patsubst %/,%,$(IMAGE_REPO))/)
OPERATOR_IMAGE := $(IMAGE_PREFIX)razor-operator:$(VERSION)
TRAINER_IMAGE  := $(IMAGE_PREFIX)razor-trainer:$(VERSION)
TRAINER_CPU_IMAGE := $(IMAGE_PREFIX)razor-trainer:$(VERSION)-cpu
IMAGE_BUILD_FLAGS ?=
BUILD := $(ENGINE) build$(if $(WHEELS), --build-context wheels=$(WHEELS))$(if $(IMAGE_BUILD_FLAGS), $(IMAGE_BUILD_FLAGS))

images:
	$(BUILD) -f images/operator/Dockerfile -t $(OPERATOR_IMAGE) .
	$(BUILD) -f images/trainer/Dockerfile --build-arg VARIANT=cuda -t $(TRAINER_IMAGE) .
	$(BUILD) -f images/trainer/Dockerfile --build-arg VARIANT=cpu \
	  --build-arg BASE_IMAGE=$(CPU_BASE_IMAGE) -t $(TRAINER_CPU_IMAGE) .

push-images:
	@test -n "$(IMAGE_REPO)" || { echo "make push-images: give the registry, e.g. IMAGE_REPO=registry.example.com/team" >&2; exit 2; }
	$(ENGINE) push $(OPERATOR_IMAGE)
	$(ENGINE) push $(TRAINER_IMAGE)
	$(ENGINE) push $(TRAINER_CPU_IMAGE)

demo: install
	$(VENV)/bin/razorctl submit --local examples/razorjob-digits-kd.yaml

test: install k8s-binaries helm-binary slurm-cluster images-tools node-tools
	$(PY) -m pytest $(PYTEST_ARGS)

test-local: install
	$(PY) -m pytest -m local $(PYTEST_ARGS)

bench: install
	$(PY) benchmarks/run.py --write

clean:
	rm -rf work_dirs .pytest_cache
