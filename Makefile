# Two commands on a fresh machine (Debian/Ubuntu, Python >= 3.11; root for apt-get, else see
# docs/training.md, "Data"):
#   make demo   # set everything up (solo-learn included), then `s2bnn demo` (about 8 minutes)
#   make test   # set everything up, then run the test suite
# solo-learn comes from `s2bnn setup-solo`: a download of the pinned commit from GitHub, or,
# offline, S2BNN_SOLO_SOURCE=/path/to/solo-learn.tar.gz (or a checkout) make test.

PYTHON ?= python
DEMO_DIR ?= s2bnn-demo
DEMO_ARGS ?=
PYTEST_ARGS ?= -rs

.PHONY: setup data demo test doctor

setup:
	$(PYTHON) -m pip install -c constraints.txt -e '.[solo,dev]'
	$(PYTHON) -m s2bnn_plugin.cli setup-solo
	@$(MAKE) --no-print-directory data PYTHON=$(PYTHON)

# Fashion-MNIST: already findable (Debian's package, or $$S2BNN_FASHION_MNIST), else Debian's
# package when apt-get can run; otherwise say how and go on (the tests that read it skip).
data:
	@if $(PYTHON) -c "from s2bnn_plugin.data import find_fashion_mnist as f; f()" 2>/dev/null; then \
		echo "Fashion-MNIST: found"; \
	elif command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
		apt-get install -y dataset-fashion-mnist || \
		(apt-get update && apt-get install -y dataset-fashion-mnist); \
	else \
		echo "Fashion-MNIST not found and apt-get needs root: set S2BNN_FASHION_MNIST to a"; \
		echo "folder holding its four idx files (docs/training.md, \"Data\")"; \
	fi

doctor:
	$(PYTHON) -m s2bnn_plugin.cli doctor

demo: setup doctor
	$(PYTHON) -m s2bnn_plugin.cli demo --out $(DEMO_DIR) $(DEMO_ARGS)

test: setup
	$(PYTHON) -m pytest $(PYTEST_ARGS)
