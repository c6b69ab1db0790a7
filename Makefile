# Two commands do everything on a fresh machine:
#   make demo   create the environment, install, analyse the bundled demo data, say where to look
#   make test   install what the tests need (Python packages and Debian services) and run the suite

PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
DEMO_DB = out/demo.duckdb

.PHONY: demo test install install-test services bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e .
	touch $@

$(VENV)/.installed-test: pyproject.toml $(VENV)/.installed
	$(BIN)/pip install -q -e '.[test,spark]'
	touch $@

install: $(VENV)/.installed

install-test: $(VENV)/.installed-test

services:
	bash scripts/pg_test_server.sh
	bash scripts/install_chromium.sh
	bash scripts/install_java.sh

demo: install
	@mkdir -p out
	@rm -f $(DEMO_DB) $(DEMO_DB).wal
	$(BIN)/loyalist ingest data/demo/*.csv.gz --db $(DEMO_DB)
	$(BIN)/loyalist status --db $(DEMO_DB)
	$(BIN)/loyalist quality --db $(DEMO_DB) --export out/quarantine.csv
	$(BIN)/loyalist backtest --db $(DEMO_DB) --cutoff 2011-06-01 --horizon 90 --plots out/backtest
	$(BIN)/loyalist analyze --db $(DEMO_DB)
	$(BIN)/loyalist customers --db $(DEMO_DB) --out out/customers.csv
	$(BIN)/loyalist overdue --db $(DEMO_DB) --top 10
	$(BIN)/loyalist segments --db $(DEMO_DB)
	$(BIN)/loyalist overdue --db $(DEMO_DB) --out out/overdue.csv
	$(BIN)/loyalist gaps --db $(DEMO_DB) --out out/crosssell_gaps.csv
	$(BIN)/loyalist alerts --db $(DEMO_DB) --out out/alerts.csv
	$(BIN)/loyalist forecast --db $(DEMO_DB) --level total --out out/forecast_total.csv
	$(BIN)/loyalist report --db $(DEMO_DB) --out out/report.html
	@echo
	@echo "Demo store:        $(DEMO_DB)   (inspect with: $(BIN)/loyalist status --db $(DEMO_DB))"
	@echo "Per-customer table: out/customers.csv   (P(alive), CLV, next order, overdue, trend, segment, value grade, lifecycle ...)"
	@echo "Lists:              out/overdue.csv, out/crosssell_gaps.csv, out/alerts.csv, out/forecast_total.csv"
	@echo "Report (one file):  out/report.html"
	@echo "Backtest plots:     out/backtest/tracking.html, out/backtest/calibration_holdout.html"
	@echo "P(alive) matrix:    out/demo-reports/analysis_*/p_alive_matrix.html"
	@echo "Quarantined rows:   out/quarantine.csv"
	@echo
	@echo "Dashboard:          $(BIN)/loyalist serve --db $(DEMO_DB)   then open http://127.0.0.1:8000/"

test: install-test services
	$(BIN)/python -m pytest -n 2 --dist loadfile -q

bench: install-test
	$(BIN)/python bench/ingest.py
	$(BIN)/python bench/btyd.py
	$(BIN)/python bench/crosssell.py
	$(BIN)/python bench/value.py
	$(BIN)/python bench/serve.py
	$(BIN)/python bench/spark.py
	$(BIN)/python bench/direction.py
	$(BIN)/python bench/timing.py
	$(BIN)/python bench/forecast.py

clean:
	rm -rf out .pytest_cache test-artifacts
