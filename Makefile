# Set-up and the two everyday commands: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
EXTRAS ?= all,dev
BIN := $(VENV)/bin

.PHONY: demo test setup sysdeps clean

$(BIN)/.installed: pyproject.toml
	$(MAKE) sysdeps
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(TORCH_SPEC)
	$(BIN)/pip install -q -e ".[$(EXTRAS)]"
	touch $@

setup: $(BIN)/.installed

# open3d needs libusb at import time: installed with apt when missing (root or sudo); without apt, say so.
sysdeps:
	@if ldconfig -p 2>/dev/null | grep -q libusb-1.0.so.0; then :; \
	elif command -v apt-get >/dev/null 2>&1; then \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq libusb-1.0-0; \
	else \
		echo "note: open3d (the 3d extra) needs libusb-1.0 at import time; no apt-get here, so install it with"; \
		echo "      your package manager (brew install libusb, dnf install libusb1, ...) if it is missing"; \
	fi

demo: setup
	$(BIN)/python pipelines/brats_pretrain.py

test: setup
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) runs .pytest_cache
