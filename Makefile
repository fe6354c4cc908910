# The two commands: `make run` (the whole product on embedded defaults) and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: run test lint format browser clean

$(VENV)/.installed: requirements.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements.txt
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed requirements-dev.txt
	$(BIN)/pip install --quiet -r requirements-dev.txt
	touch $@

## make run: migrate, then start MLflow, web, worker and beat with demo data and demo users.
## Procfile.dev is the demo; Procfile is production and never seeds anything.
run: $(VENV)/.installed
	mkdir -p var
	rm -rf "$${PROMETHEUS_MULTIPROC_DIR:-var/prometheus}"  # the counters of processes that are gone
	DEBUG=$${DEBUG:-true} $(BIN)/python manage.py migrate --noinput
	DEBUG=$${DEBUG:-true} $(BIN)/honcho -f Procfile.dev start

## make test: the whole suite (starts its own MLflow server and Celery worker);
## PYTEST_ARGS selects part of it, e.g. PYTEST_ARGS="-m worker".
test: $(VENV)/.installed-dev browser
	mkdir -p var
	$(BIN)/python -m pytest $(PYTEST_ARGS)

## Browser tests drive Debian's Chromium; install it when missing and we may.
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
	      || echo "warning: could not install chromium; browser tests will be skipped"; \
	  else echo "warning: chromium missing and not root; browser tests will be skipped"; fi; }

lint: $(VENV)/.installed-dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(VENV)/.installed-dev
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf var/*.sqlite3* var/mlflow* var/celerybeat-schedule* var/staticfiles
