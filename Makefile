# Everything a fresh clone needs: `make run` (the pipeline locally) and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
CHECKOV_VENV := .venv-checkov
CHECKOV_STAMP := $(CHECKOV_VENV)/.installed-stamp
SAM_VENV := .venv-sam
SAM_STAMP := $(SAM_VENV)/.installed-stamp
SAM := SAM_CLI_TELEMETRY=0 $(SAM_VENV)/bin/sam
NODE_STAMP := node_modules/.installed-stamp
ARGS ?=
# This Makefile's folder, so that `sam build` can run the build-* targets from its scratch dir.
ROOT := $(patsubst %/,%,$(dir $(abspath $(lastword $(MAKEFILE_LIST)))))

# The functions' platform (template.yaml: python3.12, arm64 = Amazon Linux 2023, glibc 2.34):
# wheels of any manylinux tag up to 2.34, never an sdist, whatever Python builds them.
LAMBDA_PYTHON_VERSION ?= 3.12
LAMBDA_PLATFORMS ?= manylinux_2_34_aarch64 manylinux_2_28_aarch64 manylinux2014_aarch64
LAMBDA_DEPS ?= build/lambda/python
LAMBDA_CODE ?= build/lambda/code
# What the functions never load: tests, headers, Cython sources, console scripts, and
# pyarrow's Flight RPC and its own S3/GCS/Azure/HDFS filesystems (S3 goes through boto3).
# tests/infra/test_lambda_package.py checks that no shared library left needs one removed.
LAMBDA_STRIP := bin pyarrow/tests pyarrow/include pyarrow/includes pyarrow/src \
	pyarrow/_pyarrow_cpp_tests.* numpy/tests numpy/*/tests numpy/_core/include \
	pyarrow/_flight.* pyarrow/libarrow_flight.so* pyarrow/libarrow_python_flight.so* \
	pyarrow/_s3fs.* pyarrow/libarrow_s3.so* pyarrow/_gcsfs.* pyarrow/_azurefs.* pyarrow/_hdfs.*
LAMBDA_FUNCTIONS := StartRunFunction GetLastIngestTimeFunction QueryToParquetFunction \
	CommitTableFunction AggregateFunction AuditTableFunction AuditSummaryFunction

.PHONY: install tools run seed simulate test unit readers infra lint typecheck bench bench-audit bench-scale bench-reread bench-run chaos \
	clean diagram lock lock-sam build lambda-deps lambda-code build-DependenciesLayer \
	$(addprefix build-,$(LAMBDA_FUNCTIONS))

$(STAMP): pyproject.toml requirements/dev.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade "pip>=24"
	$(PY) -m pip install --quiet -r requirements/dev.txt
	$(PY) -m pip install --quiet --no-deps -e .
	touch $(STAMP)

install: $(STAMP)

$(CHECKOV_STAMP): requirements/checkov.txt
	$(PYTHON) -m venv --clear $(CHECKOV_VENV)
	$(CHECKOV_VENV)/bin/python -m pip install --quiet -r requirements/checkov.txt
	touch $@

$(SAM_STAMP): requirements/sam.txt
	$(PYTHON) -m venv --clear $(SAM_VENV)
	$(SAM_VENV)/bin/python -m pip install --quiet -r requirements/sam.txt
	touch $@

$(NODE_STAMP): package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	touch $@

tools: $(CHECKOV_STAMP) $(SAM_STAMP) $(NODE_STAMP) ## checkov's and SAM CLI's own venvs, the node tools of tests/infra

run: $(STAMP) ## Run the whole state machine locally (embedded PostgreSQL, ./lake as the bucket)
	@$(VENV)/bin/totes-ingest run $(ARGS)

seed: $(STAMP)
	@$(VENV)/bin/totes-ingest seed $(ARGS)

simulate: $(STAMP)
	@$(VENV)/bin/totes-ingest simulate $(ARGS)

test: $(STAMP) tools ## The whole test suite (without the long soak: see chaos)
	$(PY) -m pytest -m "not slow" -n auto --dist loadgroup $(ARGS)

chaos: $(STAMP) ## Long chaos soak, whole windows then small ones (TOTES_CHAOS_SECONDS each, default 240; TOTES_CHAOS_SEED replays a plan) and the audit's mutation checks
	$(PY) -m pytest -m slow -s tests/chaos $(ARGS)

unit: $(STAMP)
	$(PY) -m pytest -m unit $(ARGS)

readers: $(STAMP) ## The reader compatibility suite: DuckDB, Polars, pandas and Spark read the lake
	$(PY) -m pytest -m readers $(ARGS)

infra: $(STAMP) tools ## Offline deployment checks: template, ASL, package, scanners
	$(PY) -m pytest -m infra $(ARGS)

build: $(SAM_STAMP) ## sam build (pinned SAM CLI): no Docker, no python3.12 needed
	$(SAM) build $(ARGS)

# -- what `sam build` runs (template.yaml: BuildMethod makefile) -------------------------
# The dependencies are installed once, into the DependenciesLayer; each function's code is
# the library without local/ (SAM runs a makefile build per function: a copy of ~0.1 MB).

build-DependenciesLayer:
	$(MAKE) -C $(ROOT) lambda-deps LAMBDA_DEPS="$(ARTIFACTS_DIR)/python"

$(addprefix build-,$(LAMBDA_FUNCTIONS)):
	$(MAKE) -C $(ROOT) lambda-code LAMBDA_CODE="$(ARTIFACTS_DIR)"

lambda-deps: $(STAMP) ## functions/requirements.txt for the functions' platform into LAMBDA_DEPS
	rm -rf "$(LAMBDA_DEPS)"
	$(PY) -m pip install --quiet --disable-pip-version-check --no-compile --only-binary=:all: \
	  --implementation cp --python-version $(LAMBDA_PYTHON_VERSION) \
	  $(addprefix --platform ,$(LAMBDA_PLATFORMS)) \
	  --target "$(LAMBDA_DEPS)" -r functions/requirements.txt
	cd "$(LAMBDA_DEPS)" && rm -rf $(LAMBDA_STRIP)
	find "$(LAMBDA_DEPS)" \( -name '*.pyx' -o -name '*.pxd' -o -name '*.pxi' \) -delete

lambda-code: ## The library, without local/ (the runner, seed data, simulator), into LAMBDA_CODE
	mkdir -p "$(LAMBDA_CODE)"
	rm -rf "$(LAMBDA_CODE)/totes_ingest"
	cp -R functions/totes_ingest "$(LAMBDA_CODE)/totes_ingest"
	rm -rf "$(LAMBDA_CODE)/totes_ingest/local"
	find "$(LAMBDA_CODE)/totes_ingest" -name __pycache__ -prune -exec rm -rf {} +
	if [ -d functions/certs ]; then cp -R functions/certs "$(LAMBDA_CODE)/certs"; fi

diagram: $(STAMP) ## Regenerate docs/architecture.md from statemachine/ingest.asl.json
	$(PY) statemachine/diagram.py

bench: $(STAMP) ## Time the extract against DuckDB, ConnectorX, ADBC, the seed's approach and psql at N and 4N rows (paired)
	$(PY) benchmarks/extract_bench.py $(ARGS)

bench-audit: $(STAMP) ## The audit's time and peak RSS at 1M and 10M rows with a year of daily files (moto_server)
	$(PY) benchmarks/audit_bench.py $(ARGS)

bench-scale: $(STAMP) ## An initial load of 20M sales_order rows through the state machine: one window vs MAX_WINDOW_ROWS 2M
	$(PY) benchmarks/scale_bench.py $(ARGS)

bench-reread: $(STAMP) ## What the re-read overlap costs a run at 10, 10,000 and 1,000,000 changed rows
	$(PY) benchmarks/reread_bench.py $(ARGS)

bench-run: $(STAMP) ## A whole `totes-ingest run` of the 11 tables at seed scale 100 against the sum of their extracts
	$(PY) benchmarks/run_bench.py $(ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check functions tests benchmarks statemachine
	$(VENV)/bin/ruff format --check functions tests benchmarks statemachine

typecheck: $(STAMP)
	$(VENV)/bin/mypy

clean:
	rm -rf $(VENV) $(CHECKOV_VENV) $(SAM_VENV) node_modules build .pytest_cache .mypy_cache \
	  .ruff_cache .aws-sam

lock: ## Re-pin requirements/dev.txt from requirements/dev.in
	rm -rf .venv-lock && $(PYTHON) -m venv .venv-lock
	.venv-lock/bin/pip install --quiet -r requirements/dev.in
	{ echo '# Generated by `make lock` from requirements/dev.in: the whole tree, pinned.'; \
	  .venv-lock/bin/pip freeze --exclude-editable; } > requirements/dev.txt
	rm -rf .venv-lock

lock-sam: ## Re-pin requirements/sam.txt (aws-sam-cli and its tree)
	rm -rf .venv-lock && $(PYTHON) -m venv .venv-lock
	.venv-lock/bin/pip install --quiet "aws-sam-cli==$$(sed -n 's/^aws-sam-cli==//p' requirements/sam.txt)"
	{ sed -n '1,3p' requirements/sam.txt; .venv-lock/bin/pip freeze; } > requirements/sam.txt.new
	mv requirements/sam.txt.new requirements/sam.txt
	rm -rf .venv-lock
