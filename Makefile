# Two commands do everything on a fresh clone:  make repro  |  make test
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
export DVC_NO_ANALYTICS := 1
export MLFLOW_DISABLE_TELEMETRY := true
export DO_NOT_TRACK := true
export HF_HUB_OFFLINE := 1

.PHONY: setup repro test plots bench mlflow-ui optuna-dashboard clean study frontier remedies

setup: $(STAMP)

$(STAMP): requirements.txt requirements.lock pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first and pinned: the local CPU wheel; any other spec pulls CUDA builds.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -r requirements.txt -c requirements.lock
	$(PY) -m pip install -q --no-deps -e .
	touch $(STAMP)

repro: $(STAMP)
	dvc repro

test: $(STAMP)
	$(PY) -m pytest -q

# The examples as named DVC experiments: params.yaml stays as it is, `dvc exp show` lists each beside the
# default, `dvc exp apply <name>` brings one back (`dvc exp remove <name>` before running it again).
study frontier remedies: $(STAMP)
	$(PY) scripts/experiment_overrides.py examples/$@/params.yaml --run $@

# DVC's plots page, offline: .dvc/config points `dvc plots show` at vendor/dvc_plots.html, which
# carries Vega, Vega-Lite and vega-embed inline (scripts/vendor_vega.sh rebuilds it).
plots: $(STAMP)
	dvc plots show -o dvc_plots

# PPO speed vs TRL 0.29.1 (TRL in its own environment, .venv-trl): our loop as it runs by default
# (eager), then with ppo.compile (the same work, fused kernels); each run prints its JSON last.
bench: $(STAMP) .venv-trl/.installed
	$(PY) benchmarks/ppo_vs_trl.py
	$(PY) benchmarks/ppo_vs_trl.py --compile
	$(PY) benchmarks/critic_free_vs_trl.py

.venv-trl/.installed:
	test -x .venv-trl/bin/python || python3 -m venv .venv-trl
	.venv-trl/bin/pip install -q torch==2.13.0
	.venv-trl/bin/pip install -q trl==0.29.1 transformers==5.23.0 tokenizers==0.23.3 datasets==5.2.0 requests
	touch $@

optuna-dashboard: $(STAMP)
	optuna-dashboard sqlite:///runs/sweep/optuna.db --host 127.0.0.1 --port 8080 --server wsgiref

# Opens on the experiment's training runs table (printed), not the UI's GenAI overview page.
mlflow-ui: $(STAMP)
	@$(PY) scripts/mlflow_runs_url.py
	MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false mlflow server --backend-store-uri sqlite:///mlflow.db \
		--host 127.0.0.1 --port 5000 --workers 1

clean:
	rm -rf $(VENV)
