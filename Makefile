# The two commands a newcomer needs: `make demo` and `make test`.
# Both create the environment (.venv, from the committed uv.lock) when it is missing.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
PYBIN := $(VENV)/bin/python
UV_VERSION := 0.13.9
export UV_COMPILE_BYTECODE := 1
export UV_PYTHON_DOWNLOADS := never
export RAY_AUTH_MODE ?= token
export RAY_ENABLE_UV_RUN_RUNTIME_ENV := 0
export RAY_USAGE_STATS_ENABLED := 0
export HF_HUB_OFFLINE := 1
PYTEST_ARGS ?=

.PHONY: env demo demo-map test test-slow test-all lint bench clean

$(VENV)/.synced: pyproject.toml uv.lock
	@$(PY) -m uv --version >/dev/null 2>&1 || $(PY) -m pip install --quiet "uv==$(UV_VERSION)"
	$(PY) -m uv sync --locked --compile-bytecode --python $(PY)
	@touch $@

env: $(VENV)/.synced  ## create/update the environment

demo: env  ## run the embedded demo (synthetic data, tiny model, 3 rounds, a few minutes on 2 CPUs)
	$(PYBIN) -m hssal_ray.loop loop.name=demo

DEMO_MAP := runs/demo_map
demo-map: env  ## archive to map on synthetic GeoTIFF scenes: tile, loop, export, predict (GeoTIFF map), its accuracy
	$(PYBIN) -m hssal_ray.data.synthetic_scenes $(DEMO_MAP)/scenes --blocks 16 --block 16 --noise 800
	$(PYBIN) -m hssal_ray.data.tile $(DEMO_MAP)/scenes/utm_scene.tif $(DEMO_MAP)/scenes/wgs84_scene.tif \
	    --out $(DEMO_MAP)/chips --size 32 --classes forest,water,urban --local \
	    --label-rasters $(DEMO_MAP)/scenes/utm_scene_labels.tif $(DEMO_MAP)/scenes/wgs84_scene_labels.tif
	$(PYBIN) -m hssal_ray.loop --config configs/demo_map.yaml
	$(PYBIN) -m hssal_ray.export $(DEMO_MAP)/geo --out $(DEMO_MAP)/model
	$(PYBIN) -m hssal_ray.predict $(DEMO_MAP)/geo --data $(DEMO_MAP)/chips --out $(DEMO_MAP)/pred --local
	$(PYBIN) -m hssal_ray.assess plan $(DEMO_MAP)/pred --halfwidth 0.05 --min-per-class 5
	$(PYBIN) -m hssal_ray.assess sample $(DEMO_MAP)/pred --out $(DEMO_MAP)/assess --n 40 --min-per-class 5
	$(PYBIN) -m hssal_ray.assess estimate $(DEMO_MAP)/assess --labels-from-archive
	$(PYBIN) -m hssal_ray.assess curve $(DEMO_MAP)/assess

test: env  ## the test suite CI runs (no slow benchmarks, no GPU)
	$(PYBIN) -m pytest -q $(PYTEST_ARGS)

test-slow: env  ## only what CI leaves out: the slow and Label Studio tests (24-27 min on 2 cores), before a release
	$(PYBIN) -m pytest -q -m "(slow or label_studio) and not gpu" $(PYTEST_ARGS)

test-all: env  ## include slow tests
	$(PYBIN) -m pytest -q -m "not gpu" $(PYTEST_ARGS)

lint: env
	$(PYBIN) -m ruff check hssal_ray tests benchmarks

clean:
	rm -rf runs .pytest_cache
