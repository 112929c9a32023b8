# Two-command start on a fresh machine (Debian/Ubuntu, Python >= 3.11, root for apt-get):
#   make demo   # set everything up, then run `s2bnn demo` (about 8 minutes on 2 idle CPU cores)
#   make test   # set everything up, then run the test suite
# solo-learn (the GitHub version) must be importable for the demo: see README.md, "Install".

PYTHON ?= python
DEMO_DIR ?= s2bnn-demo
DEMO_ARGS ?=

.PHONY: setup demo test check-solo

setup:
	$(PYTHON) -m pip install torch==2.14.1 torchvision==0.29.1
	$(PYTHON) -m pip install -e '.[solo,dev]'
	@if [ ! -d /usr/share/datasets/fashion-mnist ]; then \
		apt-get install -y dataset-fashion-mnist || \
		(apt-get update && apt-get install -y dataset-fashion-mnist); \
	fi

# Stops at once (before any install) when solo-learn's GitHub checkout is not importable.
check-solo:
	@$(PYTHON) -c "import importlib.util as u, sys; s = u.find_spec('solo'); \
	sys.exit(0) if s and s.submodule_search_locations else sys.exit( \
	'make demo: solo-learn is not importable. PyPI solo-learn is an unusable 2021 release: clone ' \
	'https://github.com/vturrisi/solo-learn, then put the checkout on sys.path, e.g. ' \
	'echo /path/to/solo-learn > \$$(python -c \"import site; print(site.getsitepackages()[0])\")/solo_learn.pth ' \
	'(see README.md, Install), and run make demo again.')"

demo: check-solo setup
	$(PYTHON) -m s2bnn_plugin.cli demo --out $(DEMO_DIR) $(DEMO_ARGS)

test: setup
	$(PYTHON) -m pytest -rs
