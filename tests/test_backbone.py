"""Wan components: tiny build, the real local-directory path, LoRA, and the I2V condition builder."""

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from svi.backbones import LoraSpec, attach_lora, build_tiny_wan, load_adapter, load_wan_dir, save_adapter, save_stack
from svi.backbones.wan import load_wan_from_env
from svi.conditions import Condition
from tests.conftest import TINY, compose_config


@pytest.fixture(scope="module")
def tiny_cfg():
    cfg = compose_config("train", TINY).backbone
    return OmegaConf.to_container(cfg, resolve=True)


def _inputs(seed=0, B=1):
    g = torch.Generator().manual_seed(seed)
    video = torch.rand(B, 3, 17, 64, 64, generator=g) * 2 - 1
    return video, torch.randn(B, 20, 5, 8, 8, generator=g), torch.tensor([700.0] * B)


def _kwargs(cfg):
    return {k: v for k, v in cfg.items() if k != "_target_"}


def test_tiny_build_is_deterministic_and_seed_dependent(tiny_cfg):
    a, b = build_tiny_wan(**_kwargs(tiny_cfg)), build_tiny_wan(**_kwargs(tiny_cfg))
    c = build_tiny_wan(**{**_kwargs(tiny_cfg), "seed": 1})
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert any(not torch.equal(sa[k], sc[k]) for k in sa)
    assert a.transformer.config.in_channels == 36 and a.uses_clip


def test_saved_stack_loads_through_the_real_path_with_identical_outputs(tiny_stack, tmp_path, monkeypatch):
    save_stack(tiny_stack, tmp_path / "wan")
    monkeypatch.setenv("SVI_TEST_WAN_DIR", str(tmp_path / "wan"))
    loaded = load_wan_from_env("SVI_TEST_WAN_DIR", dtype="float32")
    video, y, t = _inputs()
    for s in (tiny_stack, loaded):
        s.result = (s.encode_video(video), s.encode_text(["a red disc"]), s.encode_image(video[:, :, 0]))
    for a, b in zip(tiny_stack.result, loaded.result):
        assert torch.equal(a, b)
    lat, text, image = tiny_stack.result
    assert lat.shape == (1, 16, 5, 8, 8) and text.shape == (1, 512, 32) and image.shape == (1, 257, 24)
    assert torch.all(text[0, 11:] == 0) and text[0, :11].abs().sum() > 0  # 10 bytes + eos, then zero padding
    v1 = tiny_stack.velocity(lat, y, t, text, image)
    v2 = loaded.velocity(lat, y, t, text, image)
    assert v1.shape == (1, 16, 5, 8, 8)
    assert torch.allclose(v1, v2, atol=1e-6), (v1 - v2).abs().max()
    assert torch.allclose(tiny_stack.decode_latents(lat), loaded.decode_latents(lat))


def test_missing_or_incomplete_weights_dir_names_the_variable_and_the_part(tiny_stack, tmp_path, monkeypatch):
    monkeypatch.delenv("SVI_WAN21_I2V_14B_DIR", raising=False)
    with pytest.raises(FileNotFoundError, match="SVI_WAN21_I2V_14B_DIR"):
        load_wan_from_env("SVI_WAN21_I2V_14B_DIR")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_wan_dir(str(tmp_path / "nowhere"), env_var="SVI_WAN21_I2V_14B_DIR")
    save_stack(tiny_stack, tmp_path / "partial")
    import shutil

    shutil.rmtree(tmp_path / "partial" / "vae")
    with pytest.raises(FileNotFoundError, match=r"missing vae/config.json"):
        load_wan_dir(str(tmp_path / "partial"), env_var="SVI_WAN21_I2V_14B_DIR")
    # Without the VAE in the components list the same directory loads (latent-cache training).
    stack = load_wan_dir(str(tmp_path / "partial"), components=["transformer"], dtype="float32")
    assert stack.vae is None
    with pytest.raises(ValueError, match="backbone.components"):
        stack.encode_video(torch.zeros(1, 3, 5, 16, 16))


def test_paper_backbone_config_fails_clearly_without_weights(monkeypatch):
    monkeypatch.delenv("SVI_WAN21_I2V_14B_DIR", raising=False)
    cfg = compose_config("train", ["experiment=svi_shot"])
    with pytest.raises(Exception, match="SVI_WAN21_I2V_14B_DIR"):
        instantiate(cfg.backbone)


def test_dims_mismatch_is_reported(tiny_cfg):
    with pytest.raises(ValueError, match="text_dim"):
        build_tiny_wan(**{**_kwargs(tiny_cfg), "dims": {"text_dim": 4096}})


def test_lora_wraps_the_svi_targets_and_only_adapters_train(tiny_cfg):
    stack = build_tiny_wan(**_kwargs(tiny_cfg))
    attach_lora(stack.transformer, LoraSpec(rank=4, alpha=4))
    wrapped = sorted(n for n, m in stack.transformer.named_modules() if hasattr(m, "lora_A"))
    assert len(wrapped) == 2 * 10  # 2 blocks x (attn1 q,k,v,o + attn2 q,k,v,o + ffn 2)
    assert "blocks.0.attn2.to_out.0" in wrapped and "blocks.1.ffn.net.0.proj" in wrapped
    assert not any("add_k_proj" in n or "add_v_proj" in n for n in wrapped)
    trainable = [n for n, p in stack.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    assert all(p.dtype == torch.float32 for p in stack.parameters() if p.requires_grad)
    with pytest.raises(ValueError, match="matched no module"):
        attach_lora(build_tiny_wan(**_kwargs(tiny_cfg)).transformer, LoraSpec(rank=4, alpha=4, targets=["nope"]))


def test_fresh_lora_is_identity_and_adapter_round_trips(tiny_cfg, tmp_path):
    video, y, t = _inputs(3)
    base = build_tiny_wan(**_kwargs(tiny_cfg))
    lat, text, image = base.encode_video(video), base.encode_text(["x"]), base.encode_image(video[:, :, 0])
    v_base = base.velocity(lat, y, t, text, image)
    tuned = build_tiny_wan(**_kwargs(tiny_cfg))
    spec = LoraSpec(rank=4, alpha=4)
    attach_lora(tuned.transformer, spec)
    assert torch.allclose(tuned.velocity(lat, y, t, text, image), v_base, atol=1e-6)  # B = 0 at init
    g = torch.Generator().manual_seed(0)
    for p in tuned.transformer.parameters():
        if p.requires_grad:
            p.data = torch.randn(p.shape, generator=g) * 0.1
    v_tuned = tuned.velocity(lat, y, t, text, image)
    assert not torch.allclose(v_tuned, v_base, atol=1e-4)
    path = save_adapter(tmp_path / "adapter", tuned.transformer, spec)

    ours = build_tiny_wan(**_kwargs(tiny_cfg))
    attach_lora(ours.transformer, spec)
    load_adapter(ours.transformer, path)
    assert torch.allclose(ours.velocity(lat, y, t, text, image), v_tuned, atol=1e-6)

    # diffusers' own loader reads the same file (keys transformer.*, LoRA config in the header).
    theirs = build_tiny_wan(**_kwargs(tiny_cfg))
    theirs.transformer.load_lora_adapter(str(path), prefix="transformer", use_safetensors=True)
    assert torch.allclose(theirs.velocity(lat, y, t, text, image), v_tuned, atol=1e-6)


def test_mask_layout_matches_wan_for_first_frame_and_all_motion_frames():
    m = Condition(num_motion_frames=1).mask(1, 17, 2, 2)
    assert m.shape == (1, 4, 5, 2, 2)
    assert m[0, :, :, 0, 0].T.tolist() == [[1, 1, 1, 1]] + [[0, 0, 0, 0]] * 4
    film = Condition(num_motion_frames=5, ref_pad_num=0)
    assert film.mask(1, 17, 1, 1)[0, :, :, 0, 0].T.tolist() == [[1, 1, 1, 1]] + [[0, 0, 0, 0]] * 4  # official
    full = Condition(num_motion_frames=5, ref_pad_num=0, mask_all_motion_frames=True)
    # latent frame 1 covers pixel frames 1..4 (known), latent frame 2 covers 5..8 (unknown)
    assert full.mask(1, 17, 1, 1)[0, :, :, 0, 0].T.tolist() == [[1] * 4, [1] * 4] + [[0] * 4] * 3
    six = Condition(num_motion_frames=6, ref_pad_num=0, mask_all_motion_frames=True)
    assert six.mask(1, 17, 1, 1)[0, :, 2, 0, 0].tolist() == [1, 0, 0, 0]  # pixel frame 5 = channel 0


@pytest.mark.parametrize("ref_pad_num,expected", [(-1, ["m", "r", "r", "r", "r"]), (0, ["m", "0", "0", "0", "0"]),
                                                  (2, ["m", "r", "r", "0", "0"])])
def test_reference_padding_modes(ref_pad_num, expected):
    cond = Condition(num_motion_frames=1, ref_pad_num=ref_pad_num)
    motion, ref = torch.full((1, 3, 1, 2, 2), 0.5), torch.full((1, 3, 2, 2), -0.5)
    video = cond.pixel_condition(motion, ref, num_frames=5)
    codes = {0.5: "m", -0.5: "r", 0.0: "0"}
    assert [codes[float(video[0, 0, f, 0, 0])] for f in range(5)] == expected


def test_condition_rejects_bad_geometry():
    cond = Condition(num_motion_frames=5, ref_pad_num=0)
    with pytest.raises(ValueError, match="1\\+4k"):
        cond.pixel_condition(torch.zeros(1, 3, 5, 8, 8), torch.zeros(1, 3, 8, 8), num_frames=18)
    with pytest.raises(ValueError, match="1 to 5 motion frames"):
        cond.pixel_condition(torch.zeros(1, 3, 6, 8, 8), torch.zeros(1, 3, 8, 8), num_frames=17)
    # fewer than K motion frames is a valid condition: generation's first clip, Film's single-frame samples
    video = cond.pixel_condition(torch.ones(1, 3, 1, 8, 8), torch.ones(1, 3, 8, 8), num_frames=17)
    assert video.shape == (1, 3, 17, 8, 8) and torch.all(video[:, :, 0] == 1) and torch.all(video[:, :, 1:] == 0)


def test_build_y_is_mask_plus_encoded_condition_video(tiny_stack):
    cond = Condition(num_motion_frames=5, ref_pad_num=0)
    video, _, _ = _inputs(4)
    motion, ref = video[:, :, :5], video[:, :, 9]
    y = cond.build_y(tiny_stack, motion, ref, 17)
    assert y.shape == (1, 20, 5, 8, 8)
    assert torch.equal(y[:, :4], cond.mask(1, 17, 8, 8))
    assert torch.allclose(y[:, 4:], tiny_stack.encode_video(cond.pixel_condition(motion, ref, 17)))
