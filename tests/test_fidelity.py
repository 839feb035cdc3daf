"""Where the official SVI code does something particular, the default here does the same; the alternative is
a knob (docs/method.md, "Where we differ from the official code"). One test per knob."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from svi.conditions import FilmCondition, ShotCondition
from tests.conftest import compose_config


# -- CLIP image input ------------------------------------------------------------------------------
def test_clip_sees_the_whole_frame_squashed_by_default(tiny_stack, monkeypatch):
    """Official Wan/SVI resize the whole frame to 224x224 (bicubic, no crop); diffusers' processor resizes
    the short side and crops the centre, so a wide frame's sides never reach CLIP."""
    assert tiny_stack.clip_resize == "squash"
    image = torch.full((1, 3, 48, 96), -1.0)
    image[..., :12] = 1.0  # a white band on the left eighth of a 1:2 frame
    squash = tiny_stack.preprocess_image(image)
    s = tiny_stack.image_size
    want = F.interpolate(image, size=(s, s), mode="bicubic", align_corners=False) * 0.5 + 0.5
    want = (want - tiny_stack.image_mean) / tiny_stack.image_std
    assert squash.shape == (1, 3, s, s) and torch.allclose(squash, want)
    white = (1 - tiny_stack.image_mean) / tiny_stack.image_std  # (1, 3, 1, 1)
    assert torch.allclose(squash[..., s // 2, : s // 16], white[..., 0].expand(1, 3, s // 16), atol=1e-3)  # band kept
    monkeypatch.setattr(tiny_stack, "clip_resize", "crop")
    crop = tiny_stack.preprocess_image(image)
    black = (0 - tiny_stack.image_mean) / tiny_stack.image_std
    assert torch.allclose(crop[..., s // 2, :], black[..., 0].expand(1, 3, s), atol=1e-3)  # cropped away
    with pytest.raises(ValueError, match="clip_resize"):
        type(tiny_stack)(tiny_stack.transformer, clip_resize="pad")


def test_crop_mode_is_diffusers_clip_image_processor():
    """`crop` is what `CLIPImageProcessor` (the diffusers pipeline's preprocessing) does, up to the resampler."""
    from PIL import Image
    from transformers import CLIPImageProcessor

    from tests.sampling.conftest import make_tiny_stack

    stack = make_tiny_stack(["transformer", "image_encoder"])
    stack.clip_resize = "crop"
    rng = np.random.default_rng(0)
    pixels = (np.kron(rng.integers(0, 255, (6, 12, 3)), np.ones((8, 8, 1)))).astype(np.uint8)  # smooth blocks
    processor = CLIPImageProcessor(size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224},
                                   image_mean=stack.image_mean.flatten().tolist(),
                                   image_std=stack.image_std.flatten().tolist())
    theirs = processor(images=Image.fromarray(pixels), return_tensors="pt").pixel_values
    ours = stack.preprocess_image(torch.from_numpy(pixels).permute(2, 0, 1)[None].float() / 127.5 - 1)
    assert ours.shape == theirs.shape and (ours - theirs).abs().mean() < 0.05


# -- Film: the motion-frame mix ----------------------------------------------------------------------
def test_film_trains_on_single_frame_conditions_one_time_in_ten(tiny_stack):
    """Officially 90 % of Film samples use the K = 5 motion frames and 10 % only frame 0 followed by zeros
    (what generation's first clip looks like)."""
    film = FilmCondition()
    assert film.full_motion_prob == 0.9 and compose_config("train", ["condition=film"]).condition.full_motion_prob == 0.9
    rng = random.Random(0)
    counts = [film.draw(rng)["num_motion"] for _ in range(4000)]
    assert set(counts) == {1, 5} and abs(counts.count(1) / 4000 - 0.1) < 0.02
    assert {FilmCondition(full_motion_prob=1.0).draw(rng)["num_motion"] for _ in range(100)} == {5}
    assert ShotCondition().draw(rng) == {}  # nothing to draw for Shot
    g = torch.Generator().manual_seed(0)
    video, ref = torch.rand(2, 3, 9, 32, 32, generator=g) * 2 - 1, torch.rand(2, 3, 32, 32, generator=g) * 2 - 1
    mixed = film.encode_clip(tiny_stack, video, ref, ["a", "b"], draws={"num_motion": torch.tensor([5, 1])})
    full = film.build_y(tiny_stack, video[:1, :, :5], ref[:1], 9)
    single = film.build_y(tiny_stack, video[1:, :, :1], ref[1:], 9)  # frame 0, then zeros
    assert torch.allclose(mixed["y"][:1], full, atol=1e-6) and torch.allclose(mixed["y"][1:], single, atol=1e-6)
    assert not torch.allclose(full, film.build_y(tiny_stack, video[:1, :, :1], ref[:1], 9))
    # the CLIP tokens come from frame 0 either way
    assert torch.allclose(mixed["image"], tiny_stack.encode_image(video[:, :, 0]), atol=1e-6)


def test_film_draws_are_part_of_the_clip_so_a_cache_holds_what_training_sees(tmp_path):
    pytest.importorskip("decord")
    from svi.data.video import VideoClipDataset
    from svi.toy.world import write_dataset

    write_dataset(tmp_path, num_videos=2, num_frames=33, height=32, width=32, progress=False)
    ds = VideoClipDataset(str(tmp_path), num_frames=9, height=32, width=32, condition=FilmCondition(), seed=0)
    draws = []
    for epoch in range(30):
        ds.set_epoch(epoch)
        item = ds[0]
        draws.append(item["draws"]["num_motion"])
        again = ds.draw_params(0, 33, 32, 32)
        assert again.draws == item["draws"]  # a pure function of (seed, epoch, index), like the crop
    assert set(draws) == {1, 5}


# -- the clean-buffer-update rule -----------------------------------------------------------------------
def test_clean_for_the_store_coin_is_the_clean_coin():
    """See tests/unit/test_erft.py::test_clean_flag_is_the_coin_not_an_empty_bank for the mechanics."""
    assert compose_config("train", []).injection.clean_flag == "coin"
    assert compose_config("train", ["experiment=svi_film"]).injection.clean_flag == "coin"


# -- generation: image size, quantisation, negative prompt and seeds ----------------------------------
def test_generation_keeps_the_images_aspect_ratio_by_default():
    from svi.sampling.media import generation_size

    assert compose_config("generate", []).image_resize.value == "keep_aspect"
    # official rule: width at most max_width (832 at 480p), both sides rounded down to multiples of 16
    assert generation_size((1920, 1080), 480, 832) == (464, 832)  # 832 * 1080 / 1920 = 468 -> 464
    assert generation_size((640, 480), 480, 832) == (480, 640)  # narrower than 832: its own size
    assert generation_size((650, 490), 480, 832) == (480, 640)  # rounded down to multiples of 16
    assert generation_size((1920, 1080), 480, 832, "stretch") == (480, 832)
    assert generation_size((1000, 1000), 480, 832, max_width=512) == (512, 512)
    with pytest.raises(ValueError, match="image_resize"):
        generation_size((64, 64), 32, 32, "fill")


def test_frames_are_truncated_to_uint8_by_default():
    from svi.sampling.media import to_uint8

    video = torch.tensor([-1.0, -0.999, 0.0, 0.99, 1.0]).view(1, 1, 5, 1, 1).expand(1, 3, 5, 1, 1)
    truncated = to_uint8(video)[:, 0, 0, 0].tolist()
    rounded = to_uint8(video, "round")[:, 0, 0, 0].tolist()
    assert truncated == [0, 0, 127, 253, 255]  # (x + 1) * 127.5 cast to uint8, as the official pipeline
    assert rounded == [0, 0, 128, 254, 255]
    assert compose_config("generate", []).quantize.value == "truncate"


def test_the_svi_preset_is_the_default_and_wan_is_one_override():
    from svi.sampling import SVI_NEGATIVE_PROMPT

    svi = compose_config("generate", [])
    assert svi.negative_prompt == SVI_NEGATIVE_PROMPT and svi.seed_stride == 42  # SVI's scripts: seed 42 i
    wan = compose_config("generate", ["preset=wan"])
    assert wan.negative_prompt is None and wan.seed_stride == 1  # None: Wan's standard negative prompt
    override = compose_config("generate", ["negative_prompt=blurry", "seed_stride=7"])
    assert override.negative_prompt == "blurry" and override.seed_stride == 7


# -- training: activation offload and precision --------------------------------------------------------
def test_offloaded_activations_give_the_same_step(tmp_path):
    """`model.offload_activations` (the official scripts' choice) keeps saved tensors on the CPU: same numbers."""
    from svi.train import build

    losses, grads = [], []
    for offload in (False, True):
        cfg = compose_config("train", ["experiment=svi_shot", "debug=tiny", "callbacks.rollout.enabled=false",
                                       f"model.offload_activations={offload}", "lora.rank=4", "lora.alpha=4",
                                       f"paths.output_dir={tmp_path / str(offload)}"])
        model, data, _ = build(cfg)
        data.setup("fit")
        batch = torch.utils.data.default_collate([data.dataset[0]])
        model.generator.manual_seed(0)
        out = model.training_step(batch, 0)
        out["loss"].backward()
        losses.append(out["loss"].detach())
        grads.append(torch.cat([p.grad.flatten() for p in model.trainable_parameters()]))
    assert torch.equal(losses[0], losses[1]) and torch.allclose(grads[0], grads[1])
    paper = compose_config("train", ["experiment=svi_shot"])
    assert paper.model.offload_activations and paper.trainer.precision == "bf16-mixed"
