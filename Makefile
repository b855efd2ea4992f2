# Every target bootstraps its own virtualenv from the hash-pinned requirements, so a fresh clone needs only python3.
VENV ?= .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin
PYTEST_ARGS ?=

.PHONY: demo demo-cluster test check mutation lint typecheck unit crds bench bench-upload bench-operator clean cluster cluster-install cluster-down cluster-bin test-servers image

$(VENV)/.stamp: requirements/runtime.txt requirements/dev.txt pyproject.toml
	python3 -m venv $(VENV)
	$(BIN)/pip install -q --require-hashes -r requirements/runtime.txt -r requirements/dev.txt
	$(BIN)/pip install -q --no-deps --no-build-isolation -e .
	touch $@

demo: $(VENV)/.stamp
	$(PY) -m examples.demo

# ruff, and the import contracts in pyproject.toml ([tool.importlinter]): the layers, and no Kubernetes or CLI
# library below the cli and operator packages.
lint: $(VENV)/.stamp
	$(BIN)/ruff check operator tests bench examples
	$(BIN)/ruff format --check operator tests bench examples
	$(BIN)/lint-imports --no-cache

typecheck: $(VENV)/.stamp
	$(BIN)/mypy

# The developer loop: everything that needs no server (lint, types, unit, local and guarantee tests but the slow
# ones), in a few minutes; make test runs the whole suite.
check: lint typecheck
	$(BIN)/pytest tests/unit tests/local tests/guarantees -m "not slow" $(PYTEST_ARGS)

# The control plane binaries are built (or found in the cache) before pytest, so no test waits on a compiler.
test: lint typecheck cluster-bin test-servers image
	DSEXPORT_K8S_BIN="$$(bash tests/cluster/build.sh)" $(BIN)/pytest $(PYTEST_ARGS)

# etcd, kube-apiserver, kube-controller-manager, kubectl and helm from the pinned Go modules in tests/cluster/build,
# cached outside the checkout (see docs/test-cluster.md).
cluster-bin:
	bash tests/cluster/build.sh

# The product's image, dsexport:<version> and dsexport:dev, with podman; rebuilt only when its inputs change.
# IMAGE=registry.example/dsexport names it for a registry; BASE=python:3.11-slim uses a base from a registry
# instead of the Debian one made here with mmdebstrap (see tests/image/build.sh).
image: test-servers
	bash tests/image/build.sh

# System packages and npm servers the destination tests run against (idempotent; quick when already there).
test-servers:
	bash tests/servers/install.sh

# A real cluster, detached: the control plane and a node (containerd, kubelet, kube-scheduler) running the product
# image; prints the kubeconfig path. Stop it with make cluster-down (see docs/test-cluster.md).
cluster: $(VENV)/.stamp cluster-bin image
	$(PY) -m tests.cluster up

# The chart on that cluster, as a user installs it: the operator Deployment runs on the node in the image it has
# (docs/kubernetes.md). helm upgrade --install, so it also upgrades (apply the CRDs first: charts/dsexport/README.md).
cluster-install: cluster
	bin="$$(bash tests/cluster/build.sh)"; \
	"$$bin/kubectl" --kubeconfig .cluster/admin.kubeconfig apply --server-side --force-conflicts -f crds/ && \
	"$$bin/helm" --kubeconfig .cluster/admin.kubeconfig upgrade --install dsexport charts/dsexport \
	  --namespace dsexport-system --create-namespace --wait --timeout 180s \
	  --set image.repository=localhost/$${IMAGE:-dsexport} --set image.tag=dev --set image.pullPolicy=Never

# The operator loop on that cluster: apply examples/cluster/, export now, show status, files and metrics.
demo-cluster: cluster
	KUBECTL="$$(bash tests/cluster/build.sh)/kubectl" $(PY) -m examples.demo_cluster

cluster-down: $(VENV)/.stamp
	$(PY) -m tests.cluster down

crds: $(VENV)/.stamp
	$(PY) -m dsexport.api.crdgen crds
	$(PY) -m dsexport.api.refdoc docs/resources.md

# Export speed and memory against hand-written baselines (pyarrow, polars, DuckDB), the byte-copy fast path, the
# copy inside an S3 store (SeaweedFS) and partition-pruned listing; BENCH_ARGS (e.g. --write-docs) goes to each.
bench: $(VENV)/.stamp test-servers
	$(PY) -m bench.run $(BENCH_ARGS)
	$(PY) -m bench.fastpath $(BENCH_ARGS)
	$(PY) -m bench.servercopy $(BENCH_ARGS)
	$(PY) -m bench.listing $(BENCH_ARGS)
	$(PY) -m bench.memory $(BENCH_ARGS)

# Upload throughput per destination against each SDK's plain upload, on the real test servers.
bench-upload: $(VENV)/.stamp test-servers
	$(PY) -m bench.upload

# The operator at scale: 1000 flows applied at once on a real control plane (no node), seconds until all are
# Ready, the operator's peak RSS, API requests per flow and writes while idle (docs/benchmarks.md).
bench-operator: $(VENV)/.stamp cluster-bin
	$(PY) -m bench.operator

# Mutation testing (docs/mutation.md), not part of make test: mutmut mutates the commit protocol, watermark, writers
# and exporter modules (MUTATE=commit,watermark picks some) and runs the unit tests on each mutant, then
# prints the kill rate per module. mutmut wants the package at src/, so it runs in .mutation/, where src links to
# operator/; its own virtualenv, since mutmut needs a newer click than runtime.txt pins.
MUTATION_VENV ?= .venv-mutation
MUTATE ?= commit,watermark,writers,exporter
comma := ,

$(MUTATION_VENV)/.stamp: requirements/runtime.txt requirements/dev.txt requirements/mutation.txt
	python3 -m venv $(MUTATION_VENV)
	$(MUTATION_VENV)/bin/pip install -q --require-hashes -r requirements/runtime.txt -r requirements/dev.txt
	$(MUTATION_VENV)/bin/pip install -q --require-hashes -r requirements/mutation.txt
	$(MUTATION_VENV)/bin/pip install -q --no-deps --no-build-isolation -e .
	touch $@

mutation: $(MUTATION_VENV)/.stamp
	rm -rf .mutation && mkdir -p .mutation/mutants/src
	for f in operator:src tests:tests examples:examples charts:charts crds:crds docs:docs README.md:README.md \
	  pyproject.toml:pyproject.toml; do \
	  ln -s "../$${f%%:*}" ".mutation/$${f##*:}"; done
	cd .mutation && start=$$(date +%s) && PYTHONPATH="$(CURDIR)/.mutation/mutants/src" \
	  "$(CURDIR)/$(MUTATION_VENV)/bin/mutmut" run $(foreach m,$(subst $(comma), ,$(MUTATE)),'dsexport.engine.$(m).*') && \
	  echo "mutmut run: $$(( $$(date +%s) - start )) s"
	cd .mutation && "$(CURDIR)/$(MUTATION_VENV)/bin/mutmut" results --all true > results.txt; \
	  awk -F': ' '/__mutmut_/ && $$2 != "not checked" { split($$1, n, "."); m = n[3]; total[m]++; \
	    if ($$2 == "killed" || $$2 == "timeout") killed[m]++; else print "  " $$2 ": " $$1 } \
	    END { for (m in total) printf "%-10s %4d/%-4d killed (%.1f%%)\n", m, killed[m], total[m], 100 * killed[m] / total[m] }' \
	    results.txt

clean:
	rm -rf $(VENV) $(MUTATION_VENV) .mutation .pytest_cache .mypy_cache .ruff_cache
