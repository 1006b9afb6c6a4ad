# ppkd: `make demo` and `make test` install what they need first.
#   make install            CPU (paddlepaddle 3.3.1) into .venv
#   make install GPU=1      paddlepaddle-gpu 2.6.2 (CUDA 11.8) instead
#   make test-paddle26      the end-to-end smoke tests on Paddle 2.6.2 (.venv-paddle26)
#   make bench-step-time    distillation step time vs the student and ppdet's DistillModel
#   make bench-bccd         the BCCD comparisons (YOLOv3, then the Faster R-CNN ablation; hours on CPU)
#   make bench-fgfi         BCCD: FGFI vs the whole-map hint vs no teacher, YOLOv3 then Faster R-CNN, 3 seeds (hours on CPU)
#   make bench-ssd          BCCD: SSD-MobileNetV1 student, no teacher / soft KL / soft KL + bounded, 3 seeds (hours on CPU)
#   make bench-gain         does distillation help? the demo on 3 seeds, then BCCD with 25 % labels (~1.5 h)
#   make bench-throughput   images/s of the real training loops (teacher, student, ppkd in float32/bf16/int8, ppdet DistillModel), demo, BCCD YOLOv3 and Faster R-CNN pairs, per thread setting
#   make bench-int8-teacher BCCD YOLOv3: the student distilled from the int8 teacher against the float32 one, 3 seeds (~2 h)
#   make bench-teacher-routes  the teacher's routes (dygraph, Paddle Inference float32 / bfloat16): speed and mAP
#   make bench-camvid       segmentation on CamVid: no teacher / pixel KD / FitNet / knowledge adaptation, 3 seeds (~2 h)
#   make bench-camvid-unlabeled  CamVid with a quarter of the masks: no teacher / pixel KD / knowledge adaptation on labelled + raw images, 3 seeds (~2.5 h)
VENV ?= .venv
ifeq ($(GPU),1)
PADDLE ?= paddlepaddle-gpu==2.6.2
else
PADDLE ?= paddlepaddle==3.3.1
endif
PY := $(VENV)/bin/python

.PHONY: install demo test test-paddle26 bench-step-time bench-bccd bench-fgfi bench-ssd bench-gain bench-throughput bench-int8-teacher bench-teacher-routes bench-camvid bench-camvid-unlabeled clean

install:
	@bash .ci/install.sh $(VENV) $(PADDLE)

demo: install
	$(PY) tools/demo.py

test: install
	$(PY) -m pytest -q tests

test-paddle26:
	@bash .ci/install.sh .venv-paddle26 paddlepaddle==2.6.2
	.venv-paddle26/bin/python -m pytest -q tests -m smoke

# TEACHER_WEIGHTS=path/to/teacher.pdparams times a trained teacher (without:
# random weights with data-calibrated BatchNorm statistics).
bench-step-time: install
	$(PY) bench/step_time.py --save step_time_yolov3_r34_mobilenet_v1 \
		$(if $(TEACHER_WEIGHTS),--teacher_weights $(TEACHER_WEIGHTS))

bench-bccd: install
	$(PY) bench/bccd_yolov3.py
	$(PY) bench/bccd_faster_rcnn.py

bench-fgfi: install
	$(PY) bench/bccd_fgfi.py --family yolov3
	$(PY) bench/bccd_fgfi.py --family faster_rcnn

bench-ssd: install
	$(PY) bench/bccd_ssd.py

bench-gain: install
	$(PY) bench/demo_seeds.py
	$(PY) bench/bccd_low_label.py

bench-throughput: install
	$(PY) bench/throughput.py

# The same runs, paired twice: each arm against the float32-taught student,
# then against the student alone.
bench-int8-teacher: install
	$(PY) bench/bccd_yolov3.py --seeds 0 1 2 --workers 2 --baseline 'fine-grained w=100' \
		--methods 'no teacher' 'fine-grained w=100' 'fine-grained w=100, int8 teacher' \
		--out bench/results/bccd_yolov3_int8_teacher
	$(PY) bench/bccd_yolov3.py --seeds 0 1 2 --workers 2 --finished_only \
		--methods 'no teacher' 'fine-grained w=100' 'fine-grained w=100, int8 teacher' \
		--out bench/results/bccd_yolov3_3seeds

bench-teacher-routes: install
	$(PY) bench/teacher_routes.py

bench-camvid: install
	$(PY) bench/camvid_ka.py

bench-camvid-unlabeled: install
	$(PY) bench/camvid_unlabeled.py

clean:
	rm -rf output dataset/demo_shapes
