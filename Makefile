# ppkd: `make demo` and `make test` install what they need first.
#   make install            CPU (paddlepaddle 3.3.1) into .venv
#   make install GPU=1      paddlepaddle-gpu 2.6.2 (CUDA 11.8) instead
#   make test-paddle26      the end-to-end smoke tests on Paddle 2.6.2 (.venv-paddle26)
VENV ?= .venv
ifeq ($(GPU),1)
PADDLE ?= paddlepaddle-gpu==2.6.2
else
PADDLE ?= paddlepaddle==3.3.1
endif
PY := $(VENV)/bin/python

.PHONY: install demo test test-paddle26 bench-bccd clean

install:
	@bash .ci/install.sh $(VENV) $(PADDLE)

demo: install
	$(PY) tools/demo.py

test: install
	$(PY) -m pytest -q tests

test-paddle26:
	@bash .ci/install.sh .venv-paddle26 paddlepaddle==2.6.2
	.venv-paddle26/bin/python -m pytest -q tests -m smoke

clean:
	rm -rf output dataset/demo_shapes
