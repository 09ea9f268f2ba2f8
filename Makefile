# The two set-up commands of the README. Each creates .venv and installs what it needs.
# torch is pinned to 2.13.0 so that the local CPU build is taken where one is provided.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

# The CDK CLI that reads aws-cdk-lib 2.275's cloud assembly (aws-cdk@latest, 3.x, does not); run with npx.
CDK_CLI ?= aws-cdk@2.1148.1
CDK := PATH="$(CURDIR)/$(BIN):$$PATH" CDK_DISABLE_CLI_TELEMETRY=true npx --yes $(CDK_CLI)

.PHONY: demo check test contract lint bench clean browser synth bootstrap deploy destroy vendor

# The demo's own install: the meter with transformers and the SageMaker SDK (`flops-meter[demo]`), about 1.5 min
# with a warm package cache; `make test` installs the full development set (`.[dev]`) over it. pip's own lines
# (Collecting …, Installing …) are the progress.
DEMO_STAMP := $(VENV)/.demo-installed
define install
	@echo "==> [1/3] $(VENV): a virtual environment ($$($(PY) --version))"
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	@echo "==> [2/3] torch 2.13.0"
	$(BIN)/pip install --progress-bar on torch==2.13.0
	@echo "==> [3/3] flops-meter[$(1)]: $(2)"
	$(BIN)/pip install --progress-bar on -e '.[$(1)]'
endef

$(STAMP): pyproject.toml
	$(call install,dev,everything the tests use: transformers · peft · TRL · moto · the SageMaker SDK · CDK · ruff)
	touch $(STAMP) $(DEMO_STAMP)

$(DEMO_STAMP): pyproject.toml
	$(call install,demo,what the demo needs: transformers · peft · the SageMaker SDK)
	touch $(DEMO_STAMP)

demo: $(DEMO_STAMP)
	$(BIN)/flops-meter pipeline demo
	@echo "The CLI is $(BIN)/flops-meter: run 'source $(BIN)/activate' to call it as flops-meter."

# Headless Chromium renders the HTML report in the tests; installed from Debian's packages where we are root.
browser:
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) >/dev/null 2>&1; } || \
	  echo "chromium not installed: the report rendering test will be skipped"

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# The developers' quick loop: lint and the tests not marked slow (tests/conftest.py SLOW). CI runs `make test`.
check: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/pytest -q -m "not slow"

test: $(STAMP) browser
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/pytest -q
	$(MAKE) contract

# The container contract: the steps' tests again, in an environment pinned to the SageMaker training image's own
# libraries (pipelines/images.py: transformers, peft, accelerate, trl …) over this machine's torch CPU build, and the
# training job run through the SDK's own driver scripts (tests/test_contract.py, tests/container.py).
# The processing image's libraries get a second environment, for the steps that run there (EstimateFLOPs reads
# configs and tokenizers with its transformers; ClassifyCompliance and PublishAudit need none).
.venv-%/.installed: $(STAMP) pipelines/images.py
	rm -rf .venv-$*
	$(PY) -m venv .venv-$*
	$(BIN)/python -c "import site; print(site.getsitepackages()[0])" > \
	  "$$(.venv-$*/bin/python -c 'import site; print(site.getsitepackages()[0])')/zz-flops-meter-base.pth"
	.venv-$*/bin/pip install --quiet $$($(BIN)/python -c "from pipelines.images import pins; print(pins('$*'))")
	printf '#!/bin/sh\nexec "$$(dirname "$$0")/python" -m torch.distributed.run "$$@"\n' > .venv-$*/bin/torchrun
	chmod +x .venv-$*/bin/torchrun
	touch $@

contract: .venv-training/.installed .venv-processing/.installed
	PYTHONPATH=$(CURDIR) .venv-training/bin/python -m pytest -q -p no:cacheprovider tests/test_contract.py \
	  tests/test_steps.py tests/test_runtime.py tests/test_light.py tests/test_flop_counter.py tests/test_tokens.py \
	  tests/test_generic_path.py tests/test_packed_cache.py
	PYTHONPATH=$(CURDIR) .venv-processing/bin/python -m pytest -q -p no:cacheprovider tests/test_steps.py \
	  -k "plan or bad_input or test_spec" tests/test_spec.py

# Wheels of what an image may lack, shipped in the code bundle (steps/vendor): CPython 3.12, x86_64 Linux.
vendor: $(STAMP)
	rm -f steps/vendor/*.whl
	$(BIN)/pip download --quiet --only-binary=:all: --no-deps --platform manylinux2014_x86_64 --python-version 3.12 \
	  --implementation cp -d steps/vendor jsonschema==4.26.0 jsonschema-specifications==2025.9.1 referencing==0.37.0 \
	  rpds-py==2026.9.1 attrs==26.1.0 typing-extensions==4.16.0 nvidia-ml-py==13.615.71

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
	rm -rf $(VENV) .venv-training .venv-processing build *.egg-info cdk.out
