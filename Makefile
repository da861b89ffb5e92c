# spotrun: one-line targets. `make help` lists them.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
NAME    ?=
CONFIG  ?= configs/aws.yaml
TRAIN_CONFIG ?= configs/demo.yaml
ARGS    ?=
FAB     := $(BIN)/fab
FABARGS := $(if $(NAME),--name $(NAME)) --config $(CONFIG)

.DEFAULT_GOAL := help
.PHONY: help setup test lint format demo data train bench aws-launch aws-status aws-setup aws-upload \
        aws-train aws-logs aws-attach aws-ssh aws-download aws-gpu aws-terminate aws-run aws-cleanup \
        python-check aws-watch aws-stop

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-14s %s\n", $$1, $$2}'

setup: python-check ## make .venv and install the project, pinned dependencies and dev tools
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	@# Dependencies only, not the project itself: everything runs from the checkout (cwd on
	@# sys.path), as on an instance, so a module that `fab sync` fails to send cannot be masked by
	@# an installed copy.
	$(BIN)/pip install -q -r requirements.lock
	@$(BIN)/python -c "import s3fs, boto3, torch; print('installed: torch', torch.__version__, '| s3fs', s3fs.__version__, '| boto3', boto3.__version__)"

# The suite mostly waits on real peers (sshd, tmux, moto, training subprocesses), so more workers
# than cores still pays: on the 2-core dev box one process took 17.6 min (642 tests), 6 workers
# 11.3 min (679 tests, machine otherwise idle).
TEST_WORKERS ?= 6

# PYTHONDONTWRITEBYTECODE (set on some CI and container images) would make every worker rewrite and
# compile every test module, and every fab, trainer and watcher process compile the project again:
# the suite starts hundreds of Python processes, so it keeps bytecode (git ignores __pycache__).
test: ## run the tests (TEST_WORKERS=6 processes; TEST_WORKERS=0 runs them in this one)
	PYTHONDONTWRITEBYTECODE= $(BIN)/python -m pytest -n $(TEST_WORKERS) --dist worksteal --durations=25

lint: ## ruff check and ruff format --check (make format rewrites)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: ## format the tree with ruff format and apply ruff's safe fixes
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

# Written once: a data/synthetic from before the writer marked its files (its `generator`
# attribute) would otherwise be refused as "not written by this script" on every `make demo`.
data: ## write the synthetic dataset the demo trains on (data/synthetic), unless it is there
	@if ls data/synthetic/*/data_train.hdf5 >/dev/null 2>&1; then \
	  echo "data/synthetic is there (rm -r data/synthetic to write it again)"; \
	else $(BIN)/python scripts/make_synthetic_data.py --out data/synthetic; fi

demo: data ## train configs/demo.yaml on synthetic data (device auto: CUDA, Apple GPU or CPU)
	$(BIN)/python -m ml.train --config configs/demo.yaml $(ARGS)

train: ## train TRAIN_CONFIG locally (ARGS='dotted.key=value ...')
	$(BIN)/python -m ml.train --config $(TRAIN_CONFIG) $(ARGS)

bench: ## run every benchmark (one line per case)
	@for b in benchmarks/*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done

aws-launch: ## launch a spot GPU instance (NAME=, CONFIG=)
	$(FAB) launch $(FABARGS)
aws-status: ## list spotrun instances with cost and run state
	$(FAB) status --config $(CONFIG)
aws-setup: ## bootstrap the instance (idempotent)
	$(FAB) setup $(FABARGS)
aws-upload: ## rsync the code (and, to a fresh instance, the checkpoint aws-download kept)
	$(FAB) sync $(FABARGS) --train-config $(TRAIN_CONFIG) $(if $(ARGS),--args "$(ARGS)")
aws-train: ## start training in tmux on the instance (TRAIN_CONFIG=, ARGS=)
	$(FAB) train $(FABARGS) --train-config $(TRAIN_CONFIG) $(if $(ARGS),--args "$(ARGS)")
aws-logs: ## follow the run's log (Ctrl-C stops following, not the run)
	$(FAB) logs $(FABARGS)
aws-attach: ## attach to the run's tmux session
	$(FAB) attach $(FABARGS)
aws-ssh: ## open a shell on the instance
	$(FAB) ssh $(FABARGS)
aws-download: ## pull checkpoints, logs and metrics to outputs/NAME/
	$(FAB) download $(FABARGS)
aws-gpu: ## one-screen GPU summary
	$(FAB) gpu $(FABARGS)
aws-terminate: ## terminate the instance (asks first; YES=1 for scripts)
	$(FAB) terminate $(FABARGS) $(if $(YES),--yes)
aws-cleanup: ## remove spotrun's IAM roles, security group and key pair when unused
	$(FAB) cleanup --config $(CONFIG)
aws-run: ## the managed journey: launch, setup, sync, train, recover from interruptions, download, terminate (DETACH=1: hand it to an Auto Scaling group)
	$(FAB) run $(FABARGS) --train-config $(TRAIN_CONFIG) $(if $(ARGS),--args "$(ARGS)") $(if $(DETACH),--detach)

# macOS's stock python3 can be 3.9 (and `python` 2.7): refuse it with the fix before making a venv.
# Written for any Python (no f-strings) so an old one gets the message, not a SyntaxError.
python-check: ## check that PY (default python3) is Python 3.10 or later
	@command -v $(PY) >/dev/null 2>&1 || { echo "error: $(PY) not found: \`brew install python@3.12\`, then \`make setup PY=python3.12\`" >&2; exit 1; }
	@$(PY) -c 'import sys; v = sys.version_info; sys.exit(0 if v >= (3, 10) else "error: spotrun needs Python 3.10 or later, and $(PY) is %d.%d: `brew install python@3.12`, then `make setup PY=python3.12`" % (v[0], v[1]))'
aws-doctor: ## check credentials, AMI, vCPU quota, S3 role and prefixes, key, SSH rule and local tools
	$(FAB) doctor $(FABARGS) $(if $(ARGS),--train-config $(TRAIN_CONFIG) --args "$(ARGS)")
aws-prices: ## spot and on-demand $/h, GPUs and placement score per configured type and zone (HOURS=)
	$(FAB) prices --config $(CONFIG) $(if $(HOURS),--hours $(HOURS))
aws-watch: ## follow a detached run (fab run --detach): state, instance, attempts, log tail, summary
	$(FAB) watch $(FABARGS)
aws-stop: ## stop a detached run: checkpoint to S3, then desired capacity 0
	$(FAB) stop $(FABARGS)

.PHONY: evaluate aws-tunnel aws-tensorboard aws-jupyter
evaluate: ## score a checkpoint on val or test: PER, per-trial CSV, chart (CKPT=, SPLIT=val|test, TRAIN_CONFIG=, ARGS=)
	$(BIN)/python -m ml.evaluate --checkpoint $(CKPT) --split $(or $(SPLIT),val) --config $(TRAIN_CONFIG) $(ARGS)
aws-tunnel: ## forward a port of the instance to this machine until Ctrl-C (PORT=, LOCAL_PORT=)
	$(FAB) tunnel $(FABARGS) --port $(PORT) $(if $(LOCAL_PORT),--local-port $(LOCAL_PORT))
aws-tensorboard: ## TensorBoard on the run's outputs, forwarded (RUN=, LOCAL_PORT=)
	$(FAB) tensorboard $(FABARGS) $(if $(RUN),--run $(RUN)) $(if $(LOCAL_PORT),--local-port $(LOCAL_PORT))
aws-jupyter: ## JupyterLab in the code folder with the run venv, forwarded (LOCAL_PORT=)
	$(FAB) jupyter $(FABARGS) $(if $(LOCAL_PORT),--local-port $(LOCAL_PORT))
.PHONY: aws-data-push aws-data-ls
aws-data-push: ## upload a dataset folder to S3, skipping what is there (SRC=DIR DEST=s3://bucket/prefix)
	$(FAB) data-push --src $(SRC) --dest $(DEST) --config $(CONFIG)
aws-data-ls: ## show a dataset in S3: sessions, files, sizes, what is missing (DEST=s3://bucket/prefix)
	$(FAB) data-ls $(DEST) --config $(CONFIG)
.PHONY: aws-rehearse aws-smoke
aws-rehearse: ## interrupt a running run's spot instance for real (AWS FIS) and report its recovery (NODE= for a cluster)
	$(FAB) rehearse $(FABARGS) $(if $(NODE),--node $(NODE))
aws-smoke: ## the whole chain on the cheapest GPU spot type, rehearsal included, goal under 30 cents (URI=s3://bucket/prefix; DRY=1 spends nothing)
	$(FAB) smoke --uri $(URI) --config $(CONFIG) $(if $(DRY),--dry-run)
