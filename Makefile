# The two set-up commands of the README. Each creates .venv and installs what it needs.
# torch is pinned to 2.13.0 so that the local CPU build is taken where one is provided.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

# The CDK CLI that reads aws-cdk-lib 2.275's cloud assembly (aws-cdk@latest, 3.x, does not); run with npx.
CDK_CLI ?= aws-cdk@2.1148.1
CDK := PATH="$(CURDIR)/$(BIN):$$PATH" CDK_DISABLE_CLI_TELEMETRY=true npx --yes $(CDK_CLI)

.PHONY: demo test lint bench clean browser synth bootstrap deploy destroy

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/flops-meter pipeline demo

# Headless Chromium renders the HTML report in the tests; installed from Debian's packages where we are root.
browser:
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) >/dev/null 2>&1; } || \
	  echo "chromium not installed: the report rendering test will be skipped"

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: $(STAMP) browser
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/pytest -q

# The governed pipeline's stack (infra/app.py): offline synth, and bootstrap/deploy/destroy with your AWS
# credentials. Pass CDK options with CDK_ARGS, e.g. make deploy CDK_ARGS="-c flops-meter:approverEmails=a@b.org".
bootstrap: $(STAMP)
	$(CDK) bootstrap $(CDK_ARGS)

synth: $(STAMP)
	$(CDK) synth --quiet $(CDK_ARGS)

deploy: $(STAMP)
	$(CDK) deploy $(CDK_ARGS)

destroy: $(STAMP)
	$(CDK) destroy $(CDK_ARGS)

bench: $(STAMP)
	$(BIN)/python bench/accuracy.py

clean:
	rm -rf $(VENV) build *.egg-info cdk.out
