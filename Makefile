# bridgescope: the two promises of the README are `make demo` and `make test`.
# Both install what they need (Debian packages, a venv with the package) and must run as root,
# because bridgescope reads and builds network namespaces.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
LISTEN ?= 127.0.0.1:8470
PYTEST_ARGS ?=

# Kernel tools we drive, the CNI plugins and plotnetcfg the benchmarks compare against, the
# browser the UI tests drive, and what python-iptables needs to build.
DEB_PACKAGES := iproute2 iptables nftables conntrack procps util-linux kmod \
	plotnetcfg containernetworking-plugins chromium \
	python3-venv python3-dev build-essential libip4tc2 libip6tc2 libxtables12

# Real container engines the engine tests run inside throwaway namespaces (tests/engines.py),
# busybox-static for their image, pipx for the install test. Installed without recommends
# (which would pull needrestart, apparmor, a docs toolchain) and with every service start
# refused: on a host with an init system the packages would start dockerd in the host's namespace.
ENGINE_PACKAGES := docker.io containerd podman netavark runc conmon busybox-static pipx
ENGINE_DAEMONS := dockerd containerd podman conmon netavark

.PHONY: help deps venv demo test lint bench clean lab-down screenshots

help:
	@echo "make demo   - build the sandbox lab and serve the dashboard on it ($(LISTEN))"
	@echo "make test   - run every test (unit, real-kernel, browser)"
	@echo "make bench  - run the benchmarks (figures go to bench/RESULTS.md by hand)"
	@echo "make lab-down - remove the sandbox lab"
	@echo "make lint   - ruff and an unreachable-code check"
	@echo "make screenshots - retake the README's pictures of one host from a real lab"

deps:
	@missing=$$(for p in $(DEB_PACKAGES); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q '^install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages:" $$missing; \
		apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q $$missing; \
	fi
	@missing=$$(for p in $(ENGINE_PACKAGES); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q '^install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing engine packages (no service may start):" $$missing; \
		made_policy=; \
		if [ ! -e /usr/sbin/policy-rc.d ]; then \
			printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod 755 /usr/sbin/policy-rc.d && made_policy=1; \
		fi; \
		before=$$(for n in $(ENGINE_DAEMONS); do pgrep -x $$n; done | tr '\n' ' '); \
		apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $$missing; \
		rc=$$?; \
		[ -z "$$made_policy" ] || rm -f /usr/sbin/policy-rc.d; \
		for pid in $$(for n in $(ENGINE_DAEMONS); do pgrep -x $$n; done); do \
			case " $$before " in *" $$pid "*) ;; *) echo "stopping $$pid, started by the install"; kill $$pid;; esac; \
		done; \
		[ $$rc = 0 ] || exit $$rc; \
	fi
	@here=$$(readlink /proc/self/ns/net); \
	for pid in $$(for n in $(ENGINE_DAEMONS); do pgrep -x $$n; done); do \
		if [ "$$(readlink /proc/$$pid/ns/net)" = "$$here" ]; then \
			echo "an engine runs in this network namespace (pid $$pid): the engine tests refuse to share it"; exit 1; \
		fi; \
	done

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

venv: $(BIN)/python
	$(BIN)/pip install -q -e '.[test,legacy]'

demo: deps venv
	$(BIN)/bridgescope lab up
	$(BIN)/bridgescope serve --netns bslab-host --listen $(LISTEN)

lab-down: venv
	$(BIN)/bridgescope lab down

test: deps venv
	@[ "$$(id -u)" = 0 ] || { echo "make test must run as root (it builds network namespaces)"; exit 1; }
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# ruff: errors, bugs, import order, modern syntax; vulture at 100% confidence: unreachable code
# and variables nothing reads.
lint: venv
	$(BIN)/ruff check .
	$(BIN)/vulture collector plumbing webui --min-confidence 100

bench: deps venv
	@for script in bench/bench_*.py; do echo "== $$script"; $(BIN)/python $$script || exit 1; done

# the README's pictures of one host (3, 60 and 500 containers), retaken from a real lab
screenshots: deps venv
	$(BIN)/python tools/screenshots.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache test-artifacts
