# lamini-lite: the two commands of the README.
#   make book   set up, execute every notebook (book profile) and build the site
#   make test   set up, run unit tests, run every notebook under nbval (ci profile),
#               and build the site from the committed outputs
SHELL := /bin/bash
.DEFAULT_GOAL := help
PY := .venv/bin/python
STAGE := scripts/stage.sh
NOTEBOOKS := $(sort $(wildcard book/*.ipynb))
# Chapter 6 runs Triton's kernels, and Triton has Linux wheels only: on other systems
# (macOS) `make test` runs every other notebook (evaluated when used, after install).
NOTEBOOKS_CI = $(if $(shell $(PY) -c "import triton" 2>/dev/null && echo yes),$(NOTEBOOKS),$(filter-out book/06_%,$(NOTEBOOKS)))

# Everything runs offline: no model or data downloads at run time.
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false
export PYTHONHASHSEED := 0

.PHONY: help install book test unit notebooks-ci site-from-outputs execute-notebooks full clean

help:
	@echo "make book   - set up .venv, execute every notebook and build the HTML site into _build/html"
	@echo "make test   - set up .venv, run unit tests, run every notebook under nbval (ci profile),"
	@echo "              and build the site from the committed notebook outputs"
	@echo "make execute-notebooks - re-execute every notebook in place (book profile) before committing"
	@echo "make full NB=05_building_mome - execute one chapter in the full profile into _build/full/"

install:
	@$(STAGE) "install (.venv)" scripts/install.sh

book:
	@rm -f _build/stage-times.txt
	@$(STAGE) "install (.venv)" scripts/install.sh
	@echo "Executing $(words $(NOTEBOOKS)) notebooks in the '$${LAMINI_LITE_PROFILE:-book}' profile."
	@echo "First run: roughly 2 hours on a 2-core CPU (the first chapter also converts"
	@echo "SmolLM2 and pretrains the synthetic backbone; both are cached). Unchanged"
	@echo "notebooks are not re-executed on later runs (execution cache)."
	@$(STAGE) "execute notebooks + build site" .venv/bin/jupyter-book build . --all -W --keep-going
	@$(PY) scripts/check_site.py _build/html
	@$(PY) scripts/browser_check.py _build/html
	@echo; echo "Stage times:"; cat _build/stage-times.txt
	@echo "Open _build/html/index.html in a browser."

test:
	@rm -f _build/stage-times.txt
	@$(STAGE) "install (.venv)" scripts/install.sh
	@$(STAGE) "unit tests" $(MAKE) --no-print-directory unit
	@$(STAGE) "notebooks under nbval (ci profile)" $(MAKE) --no-print-directory notebooks-ci
	@$(STAGE) "site from committed outputs" $(MAKE) --no-print-directory site-from-outputs
	@echo; echo "Stage times:"; cat _build/stage-times.txt

# One chapter at full size (hours on a laptop CPU), executed into a copy under
# _build/full/ so the committed book-profile outputs stay as they are.
full:
	@test -n "$(NB)" || { echo "usage: make full NB=<notebook name, e.g. 05_building_mome>"; exit 2; }
	@test -f "book/$(NB).ipynb" || { echo "NB=$(NB): expected the name of a notebook in book/ (no .ipynb)"; exit 2; }
	@test ! -e "_build/full/$(NB).ipynb" || { echo "_build/full/$(NB).ipynb exists (an earlier full run): move it away first"; exit 2; }
	@$(STAGE) "install (.venv)" scripts/install.sh
	@mkdir -p _build/full && cp "book/$(NB).ipynb" "_build/full/$(NB).ipynb"
	@$(STAGE) "execute $(NB) (full profile)" env LAMINI_LITE_PROFILE=full \
	  .venv/bin/jupyter execute --inplace --timeout=-1 "_build/full/$(NB).ipynb"
	@echo "Executed in the full profile: _build/full/$(NB).ipynb"

unit:
	$(PY) -m pytest tests -n 2 -q -p no:cacheprovider --durations=10

# Notebooks run in the small ci profile, two at a time, one thread each
# (two 2-thread processes on 2 cores thrash);
# LAMINI_LITE_NO_NETWORK=1 makes lamini_lite refuse any network connection.
notebooks-ci:
	@$(PY) -c "import triton" 2>/dev/null || echo "Triton is not installed (it has Linux wheels only): skipping chapter 6's notebook"
	@echo "building shared ci-profile artifacts first (synthetic backbone), so parallel notebooks reuse them"
	LAMINI_LITE_PROFILE=ci $(PY) -c "from lamini_lite.experiments.common import load_backbone; load_backbone(seed=0, progress=False)"
	LAMINI_LITE_PROFILE=ci LAMINI_LITE_NO_NETWORK=1 OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 \
	  $(PY) -m pytest --nbval-lax -p no:cacheprovider -n 2 --dist loadfile -q --durations=0 $(NOTEBOOKS_CI)

# The site built from the outputs committed in the notebooks, without executing them,
# then every page rendered in headless Chromium (scripts/browser_check.py).
# Jupyter Book resolves local_extensions paths next to the config file: the copy
# under _build/ gets the absolute path of _ext/.
site-from-outputs:
	@mkdir -p _build
	sed -e 's/^\([[:space:]]*execute_notebooks:\).*/\1 "off"/' \
	  -e 's#^\([[:space:]]*site_fixes:\).*#\1 "$(CURDIR)/_ext"#' _config.yml > _build/_config_no_exec.yml
	.venv/bin/jupyter-book build . --all -W --keep-going --config _build/_config_no_exec.yml
	$(PY) scripts/check_site.py _build/html
	$(PY) scripts/browser_check.py _build/html

execute-notebooks: install
	cd book && for nb in $(notdir $(NOTEBOOKS)); do \
	  echo "executing $$nb"; \
	  LAMINI_LITE_PROFILE=$${LAMINI_LITE_PROFILE:-book} ../.venv/bin/jupyter execute --inplace --timeout=3600 $$nb || exit 1; \
	done

clean:
	rm -rf _build
