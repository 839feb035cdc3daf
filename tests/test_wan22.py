"""Wan 2.2 backbones on their tiny twins: A14B (two experts) and TI2V-5B (expand_timesteps, 48-channel VAE).

Each twin is written with diffusers' own `WanImageToVideoPipeline.save_pretrained` and read back through the
env-var route of the real backbone configs (`wan22_i2v_a14b`, `wan22_ti2v_5b`); one clip of our sampler with the
LoRA off then equals the pipeline's output. Training runs, exports one adapter per expert and resumes exactly;
svi-generate runs on CPU with a LoRA per expert.
"""

from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from svi.backbones.lora import EXPERT_DIRS, LoraSpec, attach_lora, load_stack_adapters, save_stack_adapters
from svi.conditions import Condition
from svi.paths import CONF_DIR
from svi.sampling import GenerationRequest, SVIClipSampler, build_schedule
from svi.sampling.media import load_image, read_mp4
from svi.sampling.svi_clip import clip_noise
from svi.train import build
from tests.conftest import compose_config
from tests.sampling.conftest import compose_generate, write_image

STEPS, SEED, CFG = 3, 123, 5.0
ENV = {"tiny_a14b": ("wan22_i2v_a14b", "SVI_WAN22_I2V_A14B_DIR"),
       "tiny_ti2v": ("wan22_ti2v_5b", "SVI_WAN22_TI2V_5B_DIR")}


def _tiny(name: str):
    cfg = OmegaConf.to_container(compose_config("train", [f"backbone={name}"]).backbone, resolve=True)
    return instantiate(cfg)


def _svi_sigmas_scheduler():
    from diffusers import FlowMatchEulerDiscreteScheduler

    class SVISigmas(FlowMatchEulerDiscreteScheduler):  # the scheduler given SVI's sigmas (shift 5)
        def set_timesteps(self, num_inference_steps=None, device=None, **kwargs):
            sigmas = np.linspace(1.0, 0.0, num_inference_steps + 1)[:-1].tolist()
            super().set_timesteps(sigmas=sigmas, device=device)

    return SVISigmas(shift=5.0)


def _pipeline(stack):
    from diffusers import WanImageToVideoPipeline

    pipe = WanImageToVideoPipeline(tokenizer=stack.tokenizer, text_encoder=stack.text_encoder, vae=stack.vae,
                                   scheduler=_svi_sigmas_scheduler(), transformer=stack.transformer,
                                   transformer_2=stack.transformer_2, boundary_ratio=stack.boundary_ratio,
                                   expand_timesteps=stack.expand_timesteps)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _load_real_route(name: str, directory: Path, monkeypatch):
    """The real backbone config (conf/backbone/wan22_*.yaml), its directory from the environment variable."""
    real, env = ENV[name]
    monkeypatch.setenv(env, str(directory))
    cfg = compose_config("train", [f"backbone={real}", "backbone.dtype=float32", "backbone.text_len=32",
                                   "backbone.dims.text_dim=32", "backbone.dims.text_len=32"]).backbone
    return instantiate(cfg)


@pytest.fixture(scope="module")
def twins(tmp_path_factory):
    """Each tiny twin and its diffusers pipeline directory (save_pretrained)."""
    out = {}
    for name in ENV:
        stack = _tiny(name)
        directory = tmp_path_factory.mktemp(name)
        _pipeline(stack).save_pretrained(directory)
        out[name] = (stack, directory)
    return out


# -- loading --------------------------------------------------------------------------------------

def test_a14b_twin_round_trips_through_the_real_loader(twins, monkeypatch):
    stack, directory = twins["tiny_a14b"]
    loaded = _load_real_route("tiny_a14b", directory, monkeypatch)
    assert loaded.transformer_2 is not None and loaded.boundary_ratio == pytest.approx(0.9)  # from model_index.json
    assert loaded.boundary_timestep == pytest.approx(900.0) and not loaded.uses_clip and loaded.is_i2v
    for (n1, a), (n2, b) in zip(stack.state_dict().items(), loaded.state_dict().items()):
        assert n1 == n2 and torch.equal(a, b), n1
    g = torch.Generator().manual_seed(0)
    x, y, text = torch.randn(2, 16, 2, 4, 4, generator=g), torch.randn(2, 20, 2, 4, 4, generator=g), \
        torch.randn(2, 32, 32, generator=g)
    t = torch.tensor([950.0, 500.0])  # one sample per expert: split, run, put back in order
    v = loaded.velocity(x, y, t, text, None)
    v_hi = loaded.transformer(hidden_states=torch.cat([x, y], 1)[:1], timestep=t[:1], encoder_hidden_states=text[:1],
                              return_dict=False)[0]
    v_lo = loaded.transformer_2(hidden_states=torch.cat([x, y], 1)[1:], timestep=t[1:],
                                encoder_hidden_states=text[1:], return_dict=False)[0]
    assert torch.allclose(v[:1], v_hi, atol=1e-6) and torch.allclose(v[1:], v_lo, atol=1e-6)


def test_ti2v_twin_round_trips_with_its_48_channel_vae(twins, monkeypatch):
    stack, directory = twins["tiny_ti2v"]
    loaded = _load_real_route("tiny_ti2v", directory, monkeypatch)
    assert loaded.expand_timesteps and loaded.latent_condition and loaded.is_i2v and loaded.transformer_2 is None
    assert loaded.spatial_compression == 16 and loaded.latent_channels == 48
    video = torch.rand(1, 3, 5, 64, 64, generator=torch.Generator().manual_seed(0)) * 2 - 1
    lat = loaded.encode_video(video)
    assert lat.shape == (1, 48, 2, 4, 4) and torch.equal(lat, stack.encode_video(video))
    assert len(loaded.vae.config.latents_mean) == 48


def test_incomplete_wan22_dirs_fail_before_any_compute_naming_the_dir_and_the_fix(twins, tmp_path, monkeypatch):
    import shutil

    a14b = tmp_path / "a14b"
    shutil.copytree(twins["tiny_a14b"][1], a14b)
    shutil.rmtree(a14b / "transformer_2")
    with pytest.raises(Exception, match=r"(?s)a14b.*missing transformer_2/config.json.*low-noise expert.*"
                                                r"Download the complete"):
        _load_real_route("tiny_a14b", a14b, monkeypatch)
    ti2v = tmp_path / "ti2v"
    shutil.copytree(twins["tiny_ti2v"][1], ti2v)
    shutil.rmtree(ti2v / "vae")
    with pytest.raises(Exception, match=r"(?s)ti2v.*missing vae/config.json.*48-channel"):
        _load_real_route("tiny_ti2v", ti2v, monkeypatch)
    shutil.copytree(twins["tiny_a14b"][1] / "vae", ti2v / "vae")  # a Wan 2.1 VAE beside the TI2V DiT
    with pytest.raises(Exception, match=r"16 latent channels but .* predicts 48"):
        _load_real_route("tiny_ti2v", ti2v, monkeypatch)


# -- one clip equals diffusers' pipeline ----------------------------------------------------------

@pytest.mark.parametrize("name,size", [("tiny_a14b", 32), ("tiny_ti2v", 64)])
def test_one_clip_equals_diffusers_wan22_pipeline(twins, tmp_path, monkeypatch, name, size):
    """A14B: transformer for t >= 900, transformer_2 below (3 steps: t = 1000, 909, 714 use both); TI2V:
    expand_timesteps (the image as a clean first latent frame, timestep 0 on its tokens)."""
    from PIL import Image

    stack, directory = twins[name]
    loaded = _load_real_route(name, directory, monkeypatch)
    F = 5
    image_file = write_image(tmp_path / "image.png", size, size)
    prompts = tmp_path / "p.txt"
    prompts.write_text("a red disc drifts to the right\n")
    schedule = build_schedule(prompts, num_clips=1, base_seed=SEED, cfg=CFG)
    request = GenerationRequest(image=load_image(image_file, size, size), schedule=schedule, num_frames=F,
                                height=size, width=size)
    sampler = SVIClipSampler(Condition("k1", num_motion_frames=1, ref_pad_num=0), stack=loaded,
                             flow={"num_inference_steps": STEPS, "shift": 5.0}, quantize="round", progress=False)
    captured, decode = {}, loaded.decode_latents

    def capture_decode(latents):
        captured["latents"], captured["video"] = latents, decode(latents)
        return captured["video"]

    loaded.decode_latents = capture_decode
    (chunk,) = list(sampler.stream(request))

    final = {}

    def keep_latents(pipe_, i, t, kwargs):
        final["latents"] = kwargs["latents"]
        return kwargs

    s = loaded.spatial_compression
    noise = clip_noise(SEED, (1, loaded.latent_channels, 1 + (F - 1) // 4, size // s, size // s))
    video = _pipeline(stack)(image=Image.open(image_file).convert("RGB"),
                             prompt_embeds=loaded.encode_text([schedule[0].prompt]),
                             negative_prompt_embeds=loaded.encode_text([schedule[0].negative_prompt]),
                             height=size, width=size, num_frames=F, num_inference_steps=STEPS, guidance_scale=CFG,
                             latents=noise.clone(), output_type="np", callback_on_step_end=keep_latents).frames[0]
    first = 1 if loaded.latent_condition else 0  # diffusers re-substitutes TI2V's first frame after its last step
    assert torch.allclose(captured["latents"][:, :, first:], final["latents"][:, :, first:], atol=1e-5), \
        (captured["latents"] - final["latents"]).abs().max()
    ours = (captured["video"][0].permute(1, 2, 3, 0).numpy() + 1) / 2
    assert np.abs(ours - video).max() < 1e-4
    assert np.abs(chunk.frames / 255.0 - video).max() <= 0.5 / 255 + 1e-4


# -- training -------------------------------------------------------------------------------------

def _replay(trainer):
    return next(c for c in trainer.callbacks if type(c).__name__ == "ErrorReplayCallback")


def test_a14b_trains_one_lora_per_expert_exports_both_and_resumes_exactly(train_config, tmp_path):
    overrides = ["experiment=svi_shot", "debug=tiny", "backbone=tiny_a14b", "trainer.max_steps=6",
                 "callbacks.model_checkpoint.every_n_train_steps=3", "memory.warmup_steps=2",
                 "callbacks.rollout.enabled=false"]
    model, data, trainer = build(train_config(*overrides))
    assert model.stack.transformer_2 is not None
    trainer.fit(model, datamodule=data)
    ckpt_path = tmp_path / "checkpoints" / "last.ckpt"
    ckpt = torch.load(ckpt_path, weights_only=False)
    keys = list(ckpt["state_dict"])
    assert all("lora_" in k for k in keys)
    assert any(k.startswith("stack.transformer.") for k in keys) and any(k.startswith("stack.transformer_2.")
                                                                         for k in keys)
    # Both experts trained: each one's LoRA B moved away from its zero init (steps draw high and low t).
    for name in ("transformer", "transformer_2"):
        assert any(v.abs().sum() > 0 for k, v in ckpt["state_dict"].items()
                   if k.startswith(f"stack.{name}.") and "lora_B" in k), name
    for sub in EXPERT_DIRS.values():
        assert (tmp_path / "adapter" / sub / "pytorch_lora_weights.safetensors").exists()
    saved_memory = _replay(trainer).memory

    model2, data2, trainer2 = build(train_config(*overrides, f"ckpt_path={ckpt_path}"))
    trainer2.fit(model2, datamodule=data2, ckpt_path=str(ckpt_path))
    assert trainer2.global_step == 6 and _replay(trainer2).iterations == 6
    restored = _replay(trainer2).memory
    assert torch.equal(restored.vid.counts, saved_memory.vid.counts)
    for b in torch.nonzero(saved_memory.vid.counts).flatten().tolist():
        assert torch.equal(restored.vid.entries(b), saved_memory.vid.entries(b))
    opt1, opt2 = trainer.optimizers[0].state_dict(), trainer2.optimizers[0].state_dict()
    assert opt1["state"].keys() == opt2["state"].keys() and opt1["state"]
    for k, state in opt1["state"].items():
        assert torch.equal(state["exp_avg"], opt2["state"][k]["exp_avg"])
    assert torch.equal(model.generator.get_state(), model2.generator.get_state())
    for (n1, p1), (n2, p2) in zip(model.named_parameters(), model2.named_parameters()):
        assert n1 == n2 and torch.equal(p1, p2)

    # The export loads back into a fresh two-expert stack's adapters.
    fresh = _tiny("tiny_a14b")
    spec = LoraSpec(rank=16, alpha=16)
    for _, dit in fresh.experts:
        attach_lora(dit, spec)
    load_stack_adapters(fresh, tmp_path / "adapter")
    trained = dict(model.stack.transformer_2.named_parameters())
    for n, p in fresh.transformer_2.named_parameters():
        if "lora_" in n:
            assert torch.equal(p, trained[n])


def test_ti2v_trains_with_its_given_frame_out_of_the_loss(train_config, tmp_path):
    model, data, trainer = build(train_config("experiment=svi_shot_ti2v_5b", "debug=tiny", "backbone=tiny_ti2v",
                                              "trainer.max_steps=4", "memory.warmup_steps=2",
                                              "callbacks.rollout.enabled=false"))
    assert model.injection.p_vid == 0 and model.injection.p_noi == 0 and model.injection.p_img > 0
    trainer.fit(model, datamodule=data)
    memory = _replay(trainer).memory
    b = int(torch.nonzero(memory.vid.counts).flatten()[0])
    e = memory.vid.entries(b)  # (n, 48, T, h, w): the given first latent frame carries no error
    assert e.shape[1:3] == (48, 5) and e[:, :, 0].abs().max() == 0 and e[:, :, 1:].abs().max() > 0
    # The loss leaves the given frame out: changing the model's prediction there changes nothing.
    from svi.erft import erft_step

    x0, noise = torch.randn(1, 48, 5, 4, 4), torch.randn(1, 48, 5, 4, 4)
    motion = torch.rand(1, 3, 1, 64, 64) * 2 - 1
    y = Condition().build_y(model.stack, motion, motion[:, :, 0], 17)  # the latent-conditioned layout
    assert y.shape == (1, 52, 5, 4, 4) and y[:, :4, 0].min() == 1 and y[:, :, 1:].abs().max() == 0
    zeros, mask = torch.zeros(1, 48, 5, 4, 4), model.stack.loss_frame_mask(y)
    base = erft_step(lambda x, yy: x * 0, x0, noise, y, torch.tensor([0.5]), zeros, zeros, zeros[:, :, :1],
                     loss_mask=mask)
    poked = erft_step(lambda x, yy: torch.cat([x[:, :, :1] * 0 + 9, x[:, :, 1:] * 0], 2), x0, noise, y,
                      torch.tensor([0.5]), zeros, zeros, zeros[:, :, :1], loss_mask=mask)
    assert torch.equal(base.loss, poked.loss)


# -- generation -----------------------------------------------------------------------------------

def _expert_lora(stack, path: Path, seed: int) -> Path:
    """A random LoRA per expert (our export layout: high_noise/, low_noise/)."""
    spec = LoraSpec(rank=4, alpha=4)
    g = torch.Generator().manual_seed(seed)
    for _, dit in stack.experts:
        attach_lora(dit, spec)
        for n, p in dit.named_parameters():
            if "lora_" in n:
                p.data = torch.randn(p.shape, generator=g) * 0.3
    save_stack_adapters(path, stack, spec)
    return path


def test_generate_on_cpu_with_a_lora_per_expert(tmp_path):
    from svi.generate import generate

    image = write_image(tmp_path / "image.png", 32, 32)
    prompts = tmp_path / "p.txt"
    prompts.write_text("a red disc drifts to the right\n")
    lora = _expert_lora(_tiny("tiny_a14b"), tmp_path / "adapter", seed=0)
    common = ["backbone=tiny_a14b", "num_frames=5", "height=32", "width=32", "flow.num_inference_steps=3",
              "progress=false", f"image={image}", f"prompts={prompts}", "num_clips=2", "device=cpu"]
    videos = {}
    for tag, extra in {"none": [], "dir": [f"lora.path={lora}"],
                       "files": [f"lora.path={lora}/high_noise/pytorch_lora_weights.safetensors",
                                 f"lora.path_low={lora}/low_noise/pytorch_lora_weights.safetensors"],
                       "high_only": [f"lora.path={lora}/high_noise/pytorch_lora_weights.safetensors",
                                     f"lora.path_low={lora}/high_noise/pytorch_lora_weights.safetensors"]}.items():
        generate(compose_generate([*common, *extra, f"out={tmp_path / tag}"]))
        videos[tag] = read_mp4(tmp_path / tag / "video.mp4")
    assert videos["none"].shape == (4 + 5, 32, 32, 3)
    assert np.array_equal(videos["dir"], videos["files"])  # the export folder = the two files
    assert not np.array_equal(videos["dir"], videos["none"])
    assert not np.array_equal(videos["dir"], videos["high_only"])  # the low-noise expert's LoRA is used
    with pytest.raises(ValueError, match="lora.path_low"):
        generate(compose_generate([*common, f"lora.path={lora}/high_noise", f"out={tmp_path / 'bad'}"]))
    with pytest.raises(ValueError, match="one DiT"):
        generate(compose_generate([*common[1:], "backbone=tiny_ti2v", f"lora.path={lora}",
                                   f"out={tmp_path / 'bad2'}"]))


def test_generate_on_cpu_with_the_ti2v_twin(tmp_path):
    from svi.generate import generate

    image = write_image(tmp_path / "image.png", 64, 64)
    prompts = tmp_path / "p.txt"
    prompts.write_text("a red disc drifts to the right\n")
    for handoff in ("pixel", "latent"):
        generate(compose_generate(["backbone=tiny_ti2v", "num_frames=5", "flow.num_inference_steps=2",
                                   "progress=false", f"image={image}", f"prompts={prompts}", "num_clips=2",
                                   "device=cpu", f"handoff={handoff}", f"out={tmp_path / handoff}"]))
        assert read_mp4(tmp_path / handoff / "video.mp4").shape == (4 + 5, 64, 64, 3)


def test_wan22_configs_compose():
    for name in ("wan22_i2v_a14b", "wan22_ti2v_5b"):
        assert Path(CONF_DIR, "backbone", f"{name}.yaml").exists()
    cfg = compose_config("train", ["experiment=svi_shot_ti2v_5b"])
    assert cfg.backbone.env_var == "SVI_WAN22_TI2V_5B_DIR" and cfg.injection.p_vid == 0
