# meshctl — build, test and demo on a fresh Debian 12 machine (as root).
# `make demo` and `make test` install whatever is missing first.

SHELL := /bin/bash
DEB_PACKAGES := clang llvm libbpf-dev libelf-dev zlib1g-dev pkg-config bpftool \
	etcd-server etcd-client iproute2 iputils-ping iperf3 sockperf tcpdump curl \
	procps psmisc make g++ python3
NODE := node
MESHCTL := $(NODE) dist/bin/meshctl.js
JEST_RESULTS := .ci/jest-results.json

.PHONY: all deps deb npm build native echo bpf test unit demo bench clean

all: build

# Debian packages: one `apt-get update`, then install only what is missing.
deb:
	@missing=""; for p in $(DEB_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q 'install ok installed' || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  if [ "$$(id -u)" != 0 ]; then echo "error: installing Debian packages needs root"; exit 1; fi; \
	  DEBIAN_FRONTEND=noninteractive apt-get update -q && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $$missing; \
	fi

# npm packages, reinstalled only when the lock file changed.
node_modules/.package-lock.json: package-lock.json
	npm ci --no-audit --no-fund
	@touch $@

npm: node_modules/.package-lock.json

deps: deb npm

build: npm native echo
	npx tsc -p tsconfig.json
	@chmod +x dist/bin/meshctl.js
	$(NODE) -e "import('./dist/src/datapath/datapath.js').then((m) => m.compilePrograms())"

# The libbpf addon (only once native/ holds one).
native:
	@if [ -f native/binding.gyp ]; then cd native && npx node-gyp rebuild --silent; fi

# The lab pods' workload: a small static C echo server (a pod costs ~1 MB instead of a Node process).
ECHO_BIN := dist/native/meshctl-echo
echo: $(ECHO_BIN)

$(ECHO_BIN): native/echo/echo.c
	@mkdir -p $(dir $@)
	$(CC) -std=gnu11 -O2 -Wall -Wextra -static -s -o $@ $<

test: deps build
	@rm -f $(JEST_RESULTS)
	$(NODE) --experimental-vm-modules node_modules/jest/bin/jest.js --runInBand \
	  --json --outputFile=$(JEST_RESULTS)

unit: build
	$(NODE) --experimental-vm-modules node_modules/jest/bin/jest.js --runInBand dist/tests/unit

demo: deps build
	bash scripts/demo.sh

# Benchmarks (root; each compares with a baseline measured in the same run). Not part of `make test`.
bench: deps build
	$(NODE) dist/bench/ipcache.js
	$(NODE) --expose-gc dist/bench/agent.js
	$(NODE) dist/bench/density.js
	$(NODE) dist/bench/datapath.js
	$(NODE) --expose-gc dist/bench/mesh-sync.js
	$(NODE) dist/bench/mesh-propagation.js

clean:
	rm -rf dist native/build $(JEST_RESULTS)
