# heirloom: build, test, demo and benchmarks. Every Go command uses the goolm tag (pure-Go Olm).
export GOFLAGS := -tags=goolm -buildvcs=false
SHELL := /bin/bash
STATE := .state

.PHONY: all build test unit unit-postgres e2e e2e-postgres load vet lint deps demo demo-gateway bench bench-gateway bench-scale fuzz mutants clean registration stop race

all: build

build: heirloom

heirloom: $(shell find . -name '*.go' -not -path './.state/*') go.mod go.sum config.example.yaml migrations/*.sql
	go build -o heirloom .

# deps installs what the tests need: Go modules, the js-sdk test clients, Synapse in a virtualenv,
# the real bridges of the gateway tests: heisenbridge (a virtualenv), ngircd (Debian's
# package) and the test bridge on matrix-appservice-bridge with the Node.js it needs, and haproxy
# (Debian's package) for the failover test.
# Each script is quick when its part is installed.
deps: interop/node_modules/.installed
	go mod download
	scripts/synapse.sh install
	scripts/heisenbridge.sh install
	scripts/ngircd.sh install
	scripts/jsbridge.sh install
	scripts/haproxy.sh install

interop/node_modules/.installed: interop/package.json interop/package-lock.json
	cd interop && npm ci --no-audit --no-fund --loglevel=error
	touch $@

vet:
	go vet ./...
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || { echo "gofmt would change:"; gofmt -l $$(git ls-files '*.go'); exit 1; }

lint: vet
	go run honnef.co/go/tools/cmd/staticcheck@v0.8.2 ./...

# test runs vet, the unit tests and the end-to-end suite (real Synapse, real js-sdk clients),
# then prints one summary line.
test: deps lint
	@mkdir -p $(STATE)
	@set -o pipefail; go test -count=1 -timeout 40m -v ./... 2>&1 | tee $(STATE)/test.log | grep -E '^(--- |ok|FAIL|panic)|_test.go:' ; \
		status=$$?; scripts/test-summary.sh $(STATE)/test.log; exit $$status

# e2e-postgres runs the end-to-end suite with heirloom on PostgreSQL (HEIRLOOM_E2E_POSTGRES).
e2e-postgres: deps
	@test -n "$$HEIRLOOM_E2E_POSTGRES" || { echo "HEIRLOOM_E2E_POSTGRES is unset: eval \"\$$(scripts/postgres.sh start)\""; exit 1; }
	@mkdir -p $(STATE)
	@set -o pipefail; go test -count=1 -timeout 40m -v ./e2e 2>&1 | tee $(STATE)/test-postgres.log | grep -E '^(--- |ok|FAIL|panic)|_test.go:' ; \
		status=$$?; scripts/test-summary.sh $(STATE)/test-postgres.log; exit $$status

# unit runs the unit tests of every package but e2e; the PostgreSQL store tests skip (and say so)
# without HEIRLOOM_TEST_POSTGRES.
unit:
	@mkdir -p $(STATE)
	@set -o pipefail; go test -count=1 -v $$(go list ./... | grep -v '/e2e$$') 2>&1 | tee $(STATE)/unit.log | grep -E '^(--- FAIL|ok|FAIL|panic)|_test.go:' ; \
		status=$$?; scripts/test-summary.sh $(STATE)/unit.log; exit $$status

# unit-postgres starts this checkout's private PostgreSQL cluster (scripts/postgres.sh; it stays up,
# make stop ends it) and runs the unit tests with the PostgreSQL store tests on it.
unit-postgres:
	@eval "$$(scripts/postgres.sh start)" && $(MAKE) --no-print-directory unit

e2e: deps
	go test -count=1 -timeout 40m -v ./e2e

# demo brings up Synapse with heirloom registered (SQLite) and shows history sharing both ways.
demo: build deps
	scripts/demo.sh

# demo-gateway puts heirloom in front of heisenbridge (with a private ngircd) and shows an IRC
# channel in an encrypted room: lines both ways, and an invited user reading the history.
demo-gateway: build deps
	scripts/demo-gateway.sh

bench: deps
	scripts/bench.sh

# bench-gateway measures gateway mode beside the same bridge talking straight to Synapse, in one
# run: latency to the bridge's handler, the bridge's sends per second, and 200 speaking ghosts.
bench-gateway: deps
	@mkdir -p $(STATE)
	@set -o pipefail; HEIRLOOM_BRIDGE_LATENCY_MESSAGES=$${HEIRLOOM_BRIDGE_LATENCY_MESSAGES:-50} \
		go test -count=1 -timeout 40m -run '^$$' -bench 'BenchmarkGateway' -benchtime 1x ./e2e 2>&1 | tee $(STATE)/bench-gateway.log | \
		grep -E '^(Benchmark|ok|FAIL|panic)|_test.go:'

# bench-scale measures heirloom with many puppets against an in-process homeserver that answers at
# once (provisioning, database size, startup, memory idle and with machines loaded) at each of
# HEIRLOOM_SCALE_SIZES, then what provisioning costs against the real Synapse (its time, the
# requests, and what Synapse stores per puppet) for HEIRLOOM_SCALE_SYNAPSE puppets.
bench-scale: deps
	@mkdir -p $(STATE)
	@set -o pipefail; HEIRLOOM_SCALE_SIZES=$${HEIRLOOM_SCALE_SIZES:-1000,10000,100000} \
		go test -count=1 -v -timeout 240m -run '^$$' -bench 'BenchmarkScale' -benchtime 1x ./bench/scale 2>&1 | tee $(STATE)/bench-scale.log
	@set -o pipefail; go test -count=1 -v -timeout 60m -run '^$$' -bench 'BenchmarkProvisionSynapse' \
		-benchtime $${HEIRLOOM_SCALE_SYNAPSE:-200}x ./e2e 2>&1 | tee -a $(STATE)/bench-scale.log

# load runs the load test at full scale: 200 puppets, 50 rooms, 5,000 messages.
load: deps
	HEIRLOOM_LOAD_SCALE=1 go test -count=1 -timeout 60m -v -run '^TestLoad$$' ./e2e

fuzz:
	scripts/fuzz.sh $(or $(FUZZTIME),30s)

# race runs the packages where goroutines share a puppet's Olm account and sessions (e2ee, the
# transaction handler) under the race detector (about a minute; CI runs it).
race:
	go test -count=1 -race ./e2ee/... ./server

# mutants takes each security guard of scripts/mutants.txt out of the code in turn and fails
# unless the unit test named for it fails (about 7 minutes). MUTANTS_FLAGS=--e2e also runs the
# end-to-end tests named (minutes per mutant); MUTANTS_FLAGS='--only H1,A3' runs some.
mutants:
	scripts/mutants.sh $(MUTANTS_FLAGS)

# registration regenerates the committed example registration from config.example.yaml (placeholder
# tokens kept); config's TestCommittedRegistrationMatchesExample fails while it is stale.
registration:
	go run ./scripts/registration -c config.example.yaml -r registration.yaml

# stop ends what make demo and make demo-gateway left running.
stop:
	-@for pid in $(STATE)/demo/heirloom.pid $(STATE)/demo-gateway/heirloom.pid $(STATE)/demo-gateway/ngircd.pid; do \
		test -f $$pid && kill $$(cat $$pid) 2>/dev/null; rm -f $$pid; done
	scripts/synapse.sh stop
	scripts/postgres.sh stop

clean:
	rm -f heirloom
