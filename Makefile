# rlm-py: every workflow. `make help` lists the targets.
#
# On a fresh Debian/Ubuntu machine (as root, or with sudo) two commands do all the set-up:
#   make serve   install, provision Docker + runsc, build the sandbox image, run the service
#   make test    the same set-up, then the whole test suite on real runsc sandboxes

SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
# Where runsc comes from when the runtime is provisioned here: debian (the distribution's
# package, works offline from gVisor's servers, ptrace platform), apt or release (gVisor's).
GVISOR_SOURCE ?= debian
PLAYBOOK := $(VENV)/bin/ansible-playbook -i localhost, -c local ami/playbook.yml
PYTEST_ARGS ?=

.DEFAULT_GOAL := help
.PHONY: help install runtime provision-runtime ami-lint image browser serve demo test test-ui test-fast lint bench bench-cpu \
        loadtest loadtest-local ami infra-preview infra-up infra-outputs infra-destroy \
        aws-setup create conn ec2-setup list start stop reboot delete clean

help: ## list the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z0-9_ -]+:.*## / {printf "  \033[1m%-18s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev,infra,ami,loadtest]'
	touch $@

install: $(VENV)/.installed ## create .venv and install rlm-py with every extra

runtime: install ## provision Docker + runsc with the playbook's runtime part (skipped when both work)
	@if docker info 2>/dev/null | grep -q 'Runtimes:.*runsc'; then \
	  echo "runtime: Docker with the runsc runtime is up"; \
	else \
	  $(SUDO) $(PLAYBOOK) --tags runtime -e gvisor_source=$(GVISOR_SOURCE); \
	fi

image: runtime ## build the sandbox image (pulls BASE_IMAGE, else an offline Debian base)
	@command -v debootstrap >/dev/null || $(SUDO) $(PLAYBOOK) --tags image -e gvisor_source=$(GVISOR_SOURCE) -e sandbox_image_force=false
	sandbox/build_image.sh

browser: ## Debian's Chromium + ChromeDriver for the viewer's browser test
	@command -v chromium >/dev/null || { $(SUDO) apt-get update -q && $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium chromium-driver; }

provision-runtime: install ## apply the playbook's runtime part here (what CI does; a second run changes nothing)
	$(SUDO) $(PLAYBOOK) --tags runtime -e gvisor_source=$(GVISOR_SOURCE)

ami-lint: install ## syntax-check and ansible-lint the playbook
	$(PLAYBOOK) --syntax-check
	PATH=$(CURDIR)/$(VENV)/bin:$$PATH $(VENV)/bin/ansible-lint --offline --profile production ami/playbook.yml

serve: image ## run the service (python -m service) with the settings in .env / the environment
	$(PY) -m service

demo: image ## one needle-in-a-haystack query, offline, against the scripted upstream
	$(PY) -m loadtest.demo

test: image browser ## the whole test suite on real Docker + runsc (the command CI runs)
	$(PY) -m pytest -q $(PYTEST_ARGS)

test-ui: install browser ## the trajectory viewer in headless Chromium (local sandbox, no Docker)
	$(PY) -m pytest -q tests/ui $(PYTEST_ARGS)

test-fast: install ## the tests that need no Docker (local sandbox, mocks): a quick loop
	RLM_TEST_SKIP_DOCKER=1 $(PY) -m pytest -q --ignore=tests/ui $(PYTEST_ARGS)

lint: install ## ruff (rules and format), mypy over every package, the layer contracts
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

BASELINE ?= HEAD~1
bench: image ## benchmarks (sandbox, engine, end to end vs the official RLM library, CPU per request beside BASELINE's): markdown table
	$(PY) -m loadtest.bench --baseline $(BASELINE)

bench-cpu: image ## only the CPU-per-request table: this tree on both backends beside BASELINE (a git ref, or none)
	$(PY) -m loadtest.bench_cpu --baseline $(BASELINE)

# ---- load tests ---------------------------------------------------------------------------
HOST ?=
USERS ?= 20
RUN_TIME ?= 5m
SPAWN_RATE ?= 5

loadtest: install ## Locust against a deployed HOST (USERS, RUN_TIME, SPAWN_RATE); reports under logs/
	@test -n "$(HOST)" || { echo "usage: make loadtest HOST=http://... [USERS=20 RUN_TIME=5m]"; exit 2; }
	$(PY) -m loadtest.run --host $(HOST) --users $(USERS) --run-time $(RUN_TIME) --spawn-rate $(SPAWN_RATE)

loadtest-local: image ## scripted upstream + service + runsc on loopback (USERS, LOCAL_RUN_TIME=60s, LATENCY=0); fails on any error
	$(PY) -m loadtest.local --users $(USERS) --run-time $(or $(LOCAL_RUN_TIME),60s) --latency $(or $(LATENCY),0)

smoke: install ## first-deploy checks through the ALB: TLS, health, a needle, a session, stickiness (HOST, KEY or RLM_SMOKE_KEY; SMOKE_FLAGS)
	@test -n "$(HOST)" || { echo "usage: make smoke HOST=https://... [KEY=...] [SMOKE_FLAGS=--expect-alb]"; exit 2; }
	$(PY) -m loadtest.smoke --host $(HOST) $(if $(KEY),--key $(KEY),) $(SMOKE_FLAGS)

# ---- AWS: AMIs, the Pulumi fleet, one dev instance ----------------------------------------
ARCH ?= arm64
BUCKET ?=
# The stack whose AMI pointer /rlm-py/STACK/ami/ARCH the bake writes (the Pulumi stack's name).
STACK ?= $(INFRA_STACK)
KEEP ?= 3
ami: install ## bake the AMI for each ARCH ("arm64 x86_64" or all) through BUCKET; writes /rlm-py/STACK/ami/ARCH, keeps KEEP
	@test -n "$(BUCKET)" || { echo "usage: make ami ARCH=arm64 BUCKET=my-bake-bucket [STACK=dev KEEP=3 REGION=...]"; exit 2; }
	$(PY) -m ami.bake $(foreach a,$(ARCH),--arch $(a)) --bucket $(BUCKET) --stack $(STACK) --keep $(KEEP) $(if $(REGION),--region $(REGION))

INFRA_STACK ?= dev
infra-preview: install ## what `pulumi up` would change (Pulumi CLI + AWS credentials)
	cd infra && pulumi preview --stack $(INFRA_STACK) --diff
infra-up: install ## deploy or update the ALB + arm64/x86-64 fleet
	cd infra && pulumi up --stack $(INFRA_STACK)
infra-outputs: ## the stack's url, ALB DNS name and group names
	cd infra && pulumi stack output --stack $(INFRA_STACK)
infra-destroy: ## tear the stack down
	cd infra && pulumi destroy --stack $(INFRA_STACK)

EC2 = $(PY) -m infra.ec2
INSTANCE_TYPE ?=
ROOT_GB ?= 50
IAM_USER ?=
SSH_CIDR ?=
APP_CIDR ?=
REGION ?=
ID ?=
INSTANCE_PROFILE ?=
EXTRA_VARS ?=
DRY_RUN ?=
EC2_COMMON = $(if $(REGION),--region $(REGION)) $(if $(DRY_RUN),--dry-run)

aws-setup: install ## AWS credentials (asked if none), IAM_USER's access key, key pair rlm-py + rlm-py.pem, role/profile rlm-py-devbox
	$(EC2) aws-setup $(EC2_COMMON) $(if $(IAM_USER),--iam-user $(IAM_USER))
create: install ## launch the dev instance with profile rlm-py-devbox (ARCH, INSTANCE_TYPE, ROOT_GB, INSTANCE_PROFILE=none|P, STACK's AMI)
	$(EC2) create $(EC2_COMMON) --arch $(ARCH) --root-gb $(ROOT_GB) --stack $(STACK) $(if $(INSTANCE_TYPE),--instance-type $(INSTANCE_TYPE)) $(if $(INSTANCE_PROFILE),--instance-profile $(INSTANCE_PROFILE))
conn: install ## open SSH and port 3000 to you (SSH_CIDR, APP_CIDR; replaces your previous IP's rules), rsync the repo, ssh in
	$(EC2) conn $(ID) $(EC2_COMMON) $(if $(SSH_CIDR),--ssh-cidr $(SSH_CIDR)) $(if $(APP_CIDR),--app-cidr $(APP_CIDR))
# The instance's system python3: conn does not copy .venv, and ec2-setup needs no boto3.
ec2-setup: ## on the instance: provision it with ami/playbook.yml (EXTRA_VARS="k=v ...")
	python3 -m infra.ec2 ec2-setup $(if $(DRY_RUN),--dry-run) $(foreach v,$(EXTRA_VARS),-e $(v))
list: install ## table of rlm-py instances
	$(EC2) list $(EC2_COMMON)
start stop reboot delete: install ## change the rlm-py instance's state and wait (ID optional)
	$(EC2) $@ $(ID) $(EC2_COMMON)

clean: ## remove caches and build output (keeps .venv)
	rm -rf .pytest_cache .ruff_cache .mypy_cache build dist *.egg-info
