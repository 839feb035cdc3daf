"""One sigma per latent frame through the real diffusers Wan transformer, and the condition of a window."""

import pytest
import torch

from svi.backbones import build_tiny_wan
from svi.conditions import Condition
from svi.flow import frame_to_token_timesteps, to_timesteps
from svi.sampling import Denoiser, WindowCond
from svi.sampling.diagonal import ClipText, WindowConditioner
from tests.sampling.conftest import tiny_backbone_cfg


def _tiny(**transformer):
    cfg = {k: v for k, v in tiny_backbone_cfg().items() if k != "_target_"}
    cfg["transformer"] = {**cfg["transformer"], **transformer}
    return build_tiny_wan(**cfg)


def _inputs(T=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(1, 16, T, 4, 4, generator=g)
    cond = WindowCond(y=torch.randn(1, 20, T, 4, 4, generator=g), text=torch.randn(1, 512, 32, generator=g),
                      negative_text=torch.randn(1, 512, 32, generator=g),
                      image=torch.randn(1, 257, 24, generator=g), cfg=4.0)
    return x, cond


def test_equal_per_token_timesteps_reproduce_the_scalar_call(stack):
    """The per-token path (not the Denoiser's shortcut to the scalar path) with one level everywhere."""
    x, cond = _inputs()
    t = to_timesteps(torch.tensor([0.7]))
    per_token = frame_to_token_timesteps(t.view(1, 1).expand(1, 3), 4, 4, patch=2)  # (1, 3 * 2 * 2)
    assert per_token.shape == (1, 12)
    scalar = stack.velocity(x, cond.y, t, cond.text, cond.image)
    tokens = stack.velocity(x, cond.y, per_token, cond.text, cond.image)
    assert torch.allclose(scalar, tokens, atol=1e-5), (scalar - tokens).abs().max()
    assert not torch.allclose(scalar, stack.velocity(x, cond.y, t * 0.5, cond.text, cond.image), atol=1e-3)


def test_the_output_head_modulates_each_frame_with_its_own_sigma():
    """With no transformer blocks, frame j of the output depends only on frame j and its sigma: a
    per-frame call must give, at every frame, the scalar call at that frame's sigma (a single shared
    output modulation, as in MIGA's released code, would fail this)."""
    stack = _tiny(num_layers=0)
    x, cond = _inputs()
    den = Denoiser(stack)
    sigmas = [0.9, 0.5, 0.1]
    per_frame = den(x, torch.tensor([sigmas]), cond)
    for j, s in enumerate(sigmas):
        scalar = den(x, torch.tensor([s]), cond)
        assert torch.allclose(per_frame[:, :, j], scalar[:, :, j], atol=1e-5), j
    assert not torch.allclose(per_frame[:, :, 0], den(x, torch.tensor([0.1]), cond)[:, :, 0], atol=1e-4)


@pytest.fixture(scope="module")
def reference():
    return torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1)) * 2 - 1


def test_a_window_gets_the_reference_padding_sliced_to_its_length(stack, reference):
    text = torch.randn(2, 512, 32)
    conditioner = WindowConditioner(stack, Condition(), reference, window=4,
                                    texts=lambda c: ClipText(text, None, 1.0))
    cond = conditioner(3, clip=0, copies=2)  # two windows of 3 latents, batch window-major
    assert cond.y.shape == (4, 20, 3, 4, 4) and cond.text.shape == (4, 512, 32) and cond.negative_text is None
    assert torch.equal(cond.y[:, :4], torch.zeros(4, 4, 3, 4, 4))  # mask 0: nothing known
    padded = stack.encode_video(reference.unsqueeze(2).expand(-1, -1, 13, -1, -1))  # 4 latents of the ref.
    assert torch.equal(cond.y[:2, 4:], padded[:, :, :3]) and torch.equal(cond.y[2:, 4:], padded[:, :, :3])
    # Wan's VAE is causal: the first 3 latents of a 4-latent encoding are those of a 3-latent video
    short = stack.encode_video(reference.unsqueeze(2).expand(-1, -1, 9, -1, -1))
    assert torch.allclose(cond.y[:2, 4:], short, atol=1e-5)
    clip = stack.encode_image(reference)
    assert torch.equal(cond.image, clip.repeat(2, 1, 1))  # the reference's CLIP tokens in every window
    first = conditioner.first_clip(4)  # the base clip: an ordinary first clip, the image known at latent 0
    assert torch.equal(first.y, Condition().build_y(stack, reference.unsqueeze(2), reference, 13))
    with pytest.raises(ValueError, match="longer than"):
        conditioner(5, clip=0)


def test_text_to_video_stack_has_no_condition(reference):
    from omegaconf import OmegaConf

    from svi.paths import CONF_DIR

    cfg = OmegaConf.to_container(OmegaConf.load(f"{CONF_DIR}/backbone/tiny_t2v.yaml"), resolve=True)
    base = {k: v for k, v in tiny_backbone_cfg().items() if k != "_target_"}
    t2v = build_tiny_wan(**{**base, "components": cfg["components"], "dims": cfg["dims"],
                            "transformer": {**base["transformer"], **cfg["transformer"]}})
    assert not t2v.is_i2v and t2v.image_encoder is None and t2v.encode_image(reference) is None
    text = t2v.encode_text(["a cat", "a dog"])
    conditioner = WindowConditioner(t2v, Condition(), None, window=3,
                                    texts=lambda c: ClipText(text, None, 1.0))
    cond = conditioner(3, clip=0)
    assert cond.y is None and cond.image is None
    x = torch.randn(2, 16, 3, 4, 4)
    v = Denoiser(t2v)(x, torch.tensor([[0.9, 0.5, 0.2]] * 2), cond)
    assert v.shape == x.shape and torch.isfinite(v).all()
    with pytest.raises(ValueError, match="T2V transformer takes y=None"):
        t2v.velocity(x, torch.zeros(2, 20, 3, 4, 4), torch.tensor([500.0] * 2), text, None)
