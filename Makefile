# Two entry points, both safe on a fresh machine with Python 3.11:
#   make demo   - start a local custodian network on loopback and run the demo
#   make test   - lint, type-check and run the whole test suite
# Everything is installed into ./.venv from the pins in pyproject.toml.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: test demo lint typecheck netns-tools go-tools pytest coverage clean

# constraints.txt pins every transitive dependency too (pip freeze of a working venv).
$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --disable-pip-version-check -q -c constraints.txt -e '.[test,bench,sim,fuzz]'
	touch $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check protocol node simulations tests

# mypy cannot see through setuptools' editable-install finder, so it checks a
# tree of symlinks that has the installed layout (shardnet/{protocol,node,...}).
typecheck: $(STAMP)
	rm -rf build/mypy && mkdir -p build/mypy/shardnet
	ln -s ../../../protocol build/mypy/shardnet/protocol
	ln -s ../../../node build/mypy/shardnet/node
	ln -s ../../../simulations build/mypy/shardnet/simulations
	cd build/mypy && ../../$(BIN)/mypy --config-file ../../pyproject.toml -p shardnet.protocol -p shardnet.node -p shardnet.simulations

pytest: $(STAMP)
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

# The multiprocess simulation's tests give each node a network namespace: that needs
# root and iproute2's ip (Debian package iproute2), installed here when it is missing.
netns-tools:
	@if [ "$$(id -u)" = 0 ] && ! command -v ip >/dev/null; then \
		apt-get install -y -q iproute2 >/dev/null 2>&1 || \
		(apt-get update -q >/dev/null && apt-get install -y -q iproute2 >/dev/null) || \
		echo "iproute2 could not be installed: the multiprocess tests will skip"; fi

# tests/test_tlog_go.py checks our checkpoints and proofs with the Go checksum database's
# own packages: Debian's golang-go and golang-golang-x-mod-dev, installed here when missing.
go-tools:
	@if [ "$$(id -u)" = 0 ] && ! dpkg -s golang-go golang-golang-x-mod-dev >/dev/null 2>&1; then \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -q golang-go golang-golang-x-mod-dev >/dev/null 2>&1 || \
		(apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive \
		 apt-get install -y -q golang-go golang-golang-x-mod-dev >/dev/null) || \
		echo "golang-go could not be installed: the Go cross-checks will skip"; fi

test: lint typecheck netns-tools go-tools pytest

demo: $(STAMP)
	$(BIN)/shardnet demo

clean:
	rm -rf $(VENV) build

# Line coverage of protocol/ and node/, node processes included; see
# [tool.coverage.run] in pyproject.toml.
coverage: $(STAMP)
	rm -rf build/coverage && mkdir -p build/coverage
	$(BIN)/coverage run -m pytest -q -p no:cacheprovider $(PYTEST_ARGS)
	$(BIN)/coverage combine -q
	$(BIN)/coverage report
