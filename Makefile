# The two set-up commands of the README. Each creates .venv and installs what it needs.
# torch is pinned to 2.13.0 so that the local CPU build is taken where one is provided.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

# The CDK CLI that reads aws-cdk-lib 2.275's cloud assembly (aws-cdk@latest, 3.x, does not); run with npx.
CDK_CLI ?= aws-cdk@2.1148.1
CDK := PATH="$(CURDIR)/$(BIN):$$PATH" CDK_DISABLE_CLI_TELEMETRY=true npx --yes $(CDK_CLI)

.PHONY: demo test contract lint bench clean browser synth bootstrap deploy destroy vendor

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
	  tests/test_generic_path.py
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
