# svi: every verb starts from a fresh machine. `make test` builds .venv, installs, and runs the tests.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
TORCH_VERSION ?= 2.13.0
ARGS ?=

.PHONY: help install test test-fast demo demo-k2 demo-v1 demo-talk demo-dance demo-film demo-big demo-f9 demo-36k demo-still toy-base toy-base-big toy-base-f9 toy-base-36k toy-base-still toy-base-k2 toy-base-film toy-base-v1 train table-ablation table-toy-ablation table-consistency clean-outputs

help:  ## list the verbs
	@grep -E '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  %-16s %s\n", $$1, $$2}'

$(VENV)/.installed: pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	@# Leave an existing torch alone (a user's CUDA build); otherwise take the CPU build.
	@$(PY) -c "import torch" 2>/dev/null && echo "torch present: $$($(PY) -c 'import torch; print(torch.__version__)') (left alone)" \
	  || $(PIP) install -q torch==$(TORCH_VERSION)
	$(PIP) install -q -e ".[dev]"
	@touch $@

install: $(VENV)/.installed  ## create .venv and install svi (+ CPU torch if none is present)

test: install  ## run the whole CPU test suite (slow tests included)
	$(PY) -m pytest -m "not gpu" $(ARGS)

test-fast: install  ## the fast tests only
	$(PY) -m pytest -m "not gpu and not slow" $(ARGS)

demo: install  ## the main job: toy-scale SVI (the paper's recipe vs plain LoRA from the shipped toy base, drift measured; ~10 min)
	$(VENV)/bin/svi-demo $(ARGS)

demo-k2: install  ## make demo at twice the budget (600-step fine-tunes, 10 sampling steps; ~27 min)
	$(VENV)/bin/svi-demo --config-name toy/demo_k2 $(ARGS)

demo-v1: install  ## the demo on base v1 (K = 1, the paper's window image errors, 30 clips; ~13 min)
	$(VENV)/bin/svi-demo --config-name toy/demo_v1 $(ARGS)

demo-talk: install  ## toy SVI-Talk on base v1: a sound drives a sprite's size; drift and toy sync (~11 min)
	$(VENV)/bin/svi-demo --config-name toy/demo_talk $(ARGS)

demo-film: install  ## make demo in Film mode: the Film base and the paper's Film preset (experiments/toy_film)
	$(VENV)/bin/svi-demo --config-name toy/demo_film $(ARGS)

demo-big: install  ## make demo in a world of larger sprites, on its own base (experiments/toy_big; ~10 min)
	$(VENV)/bin/svi-demo --config-name toy/demo_big $(ARGS)

demo-f9: install  ## make demo with 9-frame clips (E_img leaves a reference latent clean), on its own base (experiments/toy_long_clips; ~11 min)
	$(VENV)/bin/svi-demo --config-name toy/demo_f9 $(ARGS)

demo-36k: install  ## make demo on a stronger base: make demo's base pretrained 24000 steps more (experiments/toy_demo; ~8 min)
	$(VENV)/bin/svi-demo --config-name toy/demo_36k $(ARGS)

demo-still: install  ## make demo in a world whose sprites stay put, on its own base (experiments/toy_still; ~6 min)
	$(VENV)/bin/svi-demo --config-name toy/demo_still $(ARGS)

demo-dance: install  ## toy SVI-Dance on base v1: a pose video drives the sprites; drift, pose error, PSNR (~20 min)
	$(VENV)/bin/svi-demo --config-name toy/demo_dance $(ARGS)

toy-base: install  ## retrain make demo's base (K = 2, 12000 steps) into svi/assets/toy_base_k2_long (~50 min on 2 cores)
	$(VENV)/bin/svi-train experiment=toy_pretrain condition.num_motion_frames=2 trainer.max_steps=12000 \
	  callbacks.backbone_export.dirpath=$(CURDIR)/svi/assets/toy_base_k2_long $(ARGS)

toy-base-big: install  ## retrain make demo-big's base (make toy-base in the larger-sprite world) into svi/assets/toy_base_big
	$(VENV)/bin/svi-train experiment=toy_pretrain condition.num_motion_frames=2 trainer.max_steps=12000 \
	  'data.world.sprite_size=[0.15,0.22]' callbacks.backbone_export.dirpath=$(CURDIR)/svi/assets/toy_base_big $(ARGS)

toy-base-f9: install  ## retrain make demo-f9's base (make toy-base on 9-frame clips) into svi/assets/toy_base_k2_f9
	$(VENV)/bin/svi-train experiment=toy_pretrain condition.num_motion_frames=2 backbone.native.num_frames=9 trainer.max_steps=12000 \
	  callbacks.backbone_export.dirpath=$(CURDIR)/svi/assets/toy_base_k2_f9 $(ARGS)

toy-base-36k: install  ## two more pretraining rounds of 12000 steps from svi/assets/toy_base_k2_long into svi/assets/toy_base_k2_36k (~60 min)
	$(VENV)/bin/svi-train experiment=toy_pretrain_more backbone.path=$(CURDIR)/svi/assets/toy_base_k2_long seed=1 \
	  condition.num_motion_frames=2 hydra.run.dir=outputs/bases/k2_24k \
	  callbacks.backbone_export.dirpath=$(CURDIR)/outputs/bases/k2_24k/toy_base $(ARGS)
	$(VENV)/bin/svi-train experiment=toy_pretrain_more backbone.path=$(CURDIR)/outputs/bases/k2_24k/toy_base seed=2 \
	  condition.num_motion_frames=2 hydra.run.dir=outputs/bases/k2_36k \
	  callbacks.backbone_export.dirpath=$(CURDIR)/svi/assets/toy_base_k2_36k $(ARGS)

toy-base-still: install  ## retrain make demo-still's base (make demo's base + 4000 steps in a still world) into svi/assets/toy_base_k2_still (~10 min)
	$(VENV)/bin/svi-train experiment=toy_pretrain_more backbone.path=$(CURDIR)/svi/assets/toy_base_k2_long seed=3 \
	  condition.num_motion_frames=2 'data.world.speed=[0,0]' trainer.max_steps=4000 hydra.run.dir=outputs/bases/k2_still \
	  callbacks.backbone_export.dirpath=$(CURDIR)/svi/assets/toy_base_k2_still $(ARGS)

toy-base-k2: install  ## retrain the 4000-step K = 2 base (the samplers and image-error studies) into svi/assets/toy_base_k2 (~15 min)
	$(VENV)/bin/svi-train experiment=toy_pretrain condition.num_motion_frames=2 \
	  callbacks.backbone_export.dirpath=$(CURDIR)/svi/assets/toy_base_k2 $(ARGS)

toy-base-film: install  ## retrain the toy Film base (Film condition, 9-frame clips, 12000 steps) into svi/assets/toy_base_film (~50 min)
	$(VENV)/bin/svi-train experiment=toy_pretrain condition=film backbone.native.num_frames=9 trainer.max_steps=12000 \
	  callbacks.backbone_export.dirpath=$(CURDIR)/svi/assets/toy_base_film $(ARGS)

toy-base-v1: install  ## retrain toy base v1 (K = 1) into svi/assets/toy_base (~12 min on 2 cores)
	$(VENV)/bin/svi-train experiment=toy_pretrain callbacks.backbone_export.dirpath=$(CURDIR)/svi/assets/toy_base $(ARGS)

train: install  ## svi-train with ARGS="experiment=... ..."
	$(VENV)/bin/svi-train $(ARGS)

table-ablation: install  ## paper Table 4 (ERFT ablation) at toy scale: experiments/ablation_table4
	PY=$(PY) bash experiments/ablation_table4/run.sh

table-toy-ablation: install  ## paper Table 4 on make demo's base and recipe, 3 seeds: experiments/toy_ablation
	PY=$(PY) bash experiments/toy_ablation/run.sh

table-consistency: install  ## SVI's 50 s / 250 s consistency table at toy scale: experiments/consistent_50s_250s
	PY=$(PY) bash experiments/consistent_50s_250s/run.sh

clean-outputs:  ## delete Hydra run directories
	rm -rf outputs/* multirun
	touch outputs/.gitkeep
