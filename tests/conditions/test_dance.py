"""condition=dance: the pose encoder on the patch embeddings, pose data per clip, generation from a pose video."""

from __future__ import annotations

import copy
import csv
import json

import numpy as np
import pytest
import torch
from hydra.utils import instantiate

from svi.conditions import ClipGeometry, DanceCondition
from svi.conditions.dance import PoseEncoder
from tests.conftest import compose_config

pytest.importorskip("decord")

FAST = ["experiment=svi_shot", "debug=tiny", "condition=dance", "lora.rank=4", "lora.alpha=4",
        "callbacks.rollout.enabled=false", "+trainer.enable_progress_bar=false"]


def write_pose_video(path, num_frames: int, height: int = 32, width: int = 32, fps: int = 25):
    """Frame i is uniform grey level 8 i (its index can be read back from any pixel)."""
    import imageio.v2 as imageio

    path.parent.mkdir(parents=True, exist_ok=True)
    writer = imageio.get_writer(str(path), fps=fps, codec="libx264", quality=10, macro_block_size=1,
                                ffmpeg_log_level="error", format="FFMPEG", output_params=["-crf", "0"])
    for i in range(num_frames):
        writer.append_data(np.full((height, width, 3), min(255, 8 * i), np.uint8))
    writer.close()
    return path


def frame_index(pose: torch.Tensor) -> list[int]:
    """(3, F, H, W) pose in [0, 1] written by `write_pose_video` -> each frame's index."""
    return [round(float(v) * 255 / 8) for v in pose.mean(dim=(0, 2, 3))]


def test_pose_encoder_has_the_official_layout_and_starts_at_zero():
    wan = PoseEncoder(5120, 16)
    names = [k for k in wan.state_dict() if k.endswith("weight")]
    assert names == [f"{i}.weight" for i in (0, 2, 4, 6, 8, 10, 12)]
    assert 360_000 < sum(p.numel() for p in wan.parameters()) < 380_000  # ~0.37 M at 14B width
    pose = torch.rand(1, 3, 84, 32, 48)  # 81 frames + 3, a 512x768 frame scaled down 16x for speed
    out = wan(pose)
    assert out.shape == (1, 5120, 21, 2, 3) and torch.all(out == 0)
    toy = PoseEncoder(128, 4)  # 4 pixels per token: same weights' shapes, fewer spatial halvings
    assert {k: v.shape for k, v in toy.state_dict().items() if k != "12.weight" and k != "12.bias"} == \
        {k: v.shape for k, v in PoseEncoder(128, 16).state_dict().items() if k not in ("12.weight", "12.bias")}
    assert toy(torch.rand(1, 3, 8, 32, 32)).shape == (1, 128, 2, 8, 8)
    with pytest.raises(ValueError, match="pixels_per_token"):
        DanceCondition(pixels_per_token=12)


def test_zero_encoder_leaves_the_dit_unchanged_and_a_trained_one_changes_it(tiny_stack):
    stack = copy.deepcopy(tiny_stack)
    x, y = torch.randn(1, 16, 2, 4, 4), torch.randn(1, 20, 2, 4, 4)
    text, image, t = torch.randn(1, 512, 32), torch.randn(1, 257, 24), torch.tensor([500.0])
    before = stack.velocity(x, y, t, text, image)
    dance = DanceCondition(pixels_per_token=16)
    dance.attach(stack.transformer)
    pose = {"pose": torch.rand(1, 3, 8, 32, 32)}  # 5 frames + 3 at 32x32: the 2 x 2 x 2 token grid
    with dance.forward_context(pose):
        assert torch.equal(stack.velocity(x, y, t, text, image), before)
    torch.nn.init.normal_(dance.encoder[-1].weight, std=0.1)
    with dance.forward_context(pose):
        assert not torch.allclose(stack.velocity(x, y, t, text, image), before)
    with pytest.raises(ValueError, match="pixels_per_token=16 does not fit"):
        with dance.forward_context({"pose": torch.rand(1, 3, 8, 64, 64)}):
            stack.velocity(x, y, t, text, image)


def test_gradients_reach_the_pose_encoder_and_lora_with_checkpointing(tmp_path):
    from svi.train import build

    grads = []
    for ckpt in (False, True):
        cfg = compose_config("train", [*FAST, f"model.gradient_checkpointing={ckpt}", "injection.enabled=false",
                                       "condition.pose_drop_prob=0", "condition.reference_drop_prob=0",
                                       f"paths.output_dir={tmp_path / str(ckpt)}"])
        model, data, _ = build(cfg)
        model.condition.encoder[-1].weight.data.normal_(0, 0.01, generator=torch.Generator().manual_seed(0))
        data.setup("fit")
        batch = torch.utils.data.default_collate([data.dataset[0]])
        assert batch["extras"]["pose"].shape == (1, 3, 20, 64, 64)  # 17 frames + 3
        model.generator.manual_seed(0)
        model.training_step(batch, 0)["loss"].backward()
        enc = torch.cat([p.grad.flatten() for p in model.condition.encoder.parameters()])
        lora = torch.cat([p.grad.flatten() for n, p in model.named_parameters() if "lora_" in n])
        assert enc.abs().sum() > 0 and lora.abs().sum() > 0
        grads.append((enc, lora))
    assert torch.allclose(grads[0][0], grads[1][0], atol=1e-6) and torch.allclose(grads[0][1], grads[1][1], atol=1e-6)


def test_training_drops_the_pose_and_the_reference_as_officially():
    dance = DanceCondition(pose_drop_prob=0.145, reference_drop_prob=0.1)
    B = 4000
    batch = {"latents": torch.zeros(B, 1), "y": torch.ones(B, 2, 1, 1, 1), "image": torch.ones(B, 3, 1),
             "extras": {"pose": torch.ones(B, 1, 1, 1, 1)}}
    out = dance.training_inputs(batch, torch.Generator().manual_seed(0))
    pose_dropped = (out["extras"]["pose"].flatten() == 0).float().mean()
    ref_dropped = (out["y"].flatten(1).sum(1) == 0).float()
    assert abs(pose_dropped - 0.145) < 0.02 and abs(ref_dropped.mean() - 0.1) < 0.02
    assert torch.equal(ref_dropped, (out["image"].flatten(1).sum(1) == 0).float())  # y and CLIP together


def test_per_clip_pose_slicing_is_exact_and_other_rates_are_resampled(tmp_path):
    pose = write_pose_video(tmp_path / "pose.mp4", 30, fps=25)
    dance = DanceCondition(frame_rate=25.0)
    inputs = {"pose": str(pose)}
    F, K = 9, 1
    assert dance.clips_from_inputs(inputs, F, 25.0) == 1 + (30 - 9) // 8  # 3 whole clips in 30 frames
    geometry = ClipGeometry(F, 32, 32, 25.0)
    for i in range(3):
        extras = dance.clip_extras(None, [], i, inputs, geometry)["pose"]  # (1, 3, F + 3, H, W)
        assert extras.shape == (1, 3, F + 3, 32, 32)
        got = frame_index(extras[0])
        assert got[3:] == list(range(i * (F - K), i * (F - K) + F)) and got[:3] == [got[3]] * 3
    # a 50 fps pose video at a 25 fps generation: every second pose frame, with a note
    fast = write_pose_video(tmp_path / "fast.mp4", 30, fps=50)
    with pytest.warns(UserWarning, match="resampled"):
        extras = dance.clip_extras(None, [], 0, {"pose": str(fast)}, ClipGeometry(5, 32, 32, 25.0))["pose"]
    assert frame_index(extras[0])[3:] == [0, 2, 4, 6, 8]
    with pytest.raises(ValueError, match="fewer than one clip"):
        dance.clips_from_inputs({"pose": str(pose)}, 41, 25.0)


def test_bad_pose_inputs_fail_with_the_file_named(tmp_path):
    dance = DanceCondition()
    with pytest.raises(FileNotFoundError, match="missing.mp4 does not exist"):
        dance.check_schedule([], {"pose": str(tmp_path / "missing.mp4")})
    (tmp_path / "broken.mp4").write_bytes(b"not a video")
    with pytest.raises(ValueError, match="broken.mp4 cannot be read"):
        dance.check_schedule([], {"pose": str(tmp_path / "broken.mp4")})
    with pytest.raises(ValueError, match="inputs.pose=dance.mp4"):
        dance.check_schedule([], {})
    with pytest.raises(ValueError, match="row 3: no pose video"):
        dance.read_row({"path": "a.mp4", "pose": ""}, str(tmp_path), "metadata.csv, row 3")
    with pytest.raises(FileNotFoundError, match="row 4: pose video .*gone.mp4 does not exist"):
        dance.read_row({"path": "a.mp4", "pose": "gone.mp4"}, str(tmp_path), "metadata.csv, row 4")


def test_official_dwpose_tensors_load_into_the_encoder(tmp_path, tiny_stack):
    """An SVI-Dance LoRA file carries the pose encoder as `dwpose_embedding.*` next to the LoRA."""
    from safetensors.torch import save_file

    from svi.backbones.official import read_lora

    stack = copy.deepcopy(tiny_stack)
    dance = DanceCondition()
    dance.attach(stack.transformer)
    official = {f"dwpose_embedding.{k}": torch.randn_like(v) for k, v in dance.encoder.state_dict().items()}
    layer = stack.transformer.blocks[0].attn1.to_q
    official["pipe.dit.blocks.0.self_attn.q.lora_A.default.weight"] = torch.randn(2, layer.in_features)
    official["pipe.dit.blocks.0.self_attn.q.lora_B.default.weight"] = torch.randn(layer.out_features, 2)
    save_file(official, str(tmp_path / "svi-dance.safetensors"))
    weights = read_lora(tmp_path / "svi-dance.safetensors")
    used = dance.load_adapter_tensors(weights.extras)
    assert sorted(used) == sorted(k for k in official if k.startswith("dwpose"))
    assert torch.equal(dance.encoder[12].weight, official["dwpose_embedding.12.weight"])
    wide = {"dwpose_embedding.12.weight": torch.zeros(5120, 16, 1, 2, 2)}  # a 14B file on the tiny model
    with pytest.raises(ValueError, match="do not fit this backbone"):
        dance.load_adapter_tensors({**weights.extras, **wide})


def test_training_starts_from_an_official_lora_and_pose_encoder(tmp_path):
    """lora.init_path: the official SVI-Dance run starts from UniAnimate-DiT's LoRA (DiffSynth keys, pose encoder
    beside it); B is rescaled to our alpha / r, and a file of another rank is refused by name."""
    from safetensors.torch import save_file

    from svi.train import build

    cfg = compose_config("train", [*FAST, f"paths.output_dir={tmp_path / 'a'}"])
    model, _, _ = build(cfg)
    layer = model.stack.transformer.blocks[1].attn2.to_v
    start = {f"dwpose_embedding.{k}": torch.randn_like(v) for k, v in model.condition.encoder.state_dict().items()}
    a, b = torch.randn(4, layer.in_features), torch.randn(layer.out_features, 4)
    start["pipe.dit.blocks.1.cross_attn.v.lora_A.default.weight"] = a
    start["pipe.dit.blocks.1.cross_attn.v.lora_B.default.weight"] = b
    save_file(start, str(tmp_path / "unianimate.safetensors"))
    cfg = compose_config("train", [*FAST, "lora.alpha=8", f"lora.init_path={tmp_path / 'unianimate.safetensors'}",
                                   f"paths.output_dir={tmp_path / 'b'}"])
    model, _, _ = build(cfg)
    layer = model.stack.transformer.blocks[1].attn2.to_v
    assert torch.equal(layer.lora_A["default"].weight, a)
    assert torch.allclose(layer.lora_B["default"].weight * 2.0, b)  # ours: alpha / r = 2; the file's: 1
    assert torch.equal(model.condition.encoder[12].weight, start["dwpose_embedding.12.weight"])
    untouched = model.stack.transformer.blocks[0].attn1.to_q.lora_B["default"].weight
    assert untouched.abs().sum() == 0  # a module the file lacks starts at zero
    cfg = compose_config("train", [*FAST, "lora.rank=8", f"lora.init_path={tmp_path / 'unianimate.safetensors'}",
                                   f"paths.output_dir={tmp_path / 'c'}"])
    with pytest.raises(Exception, match="set lora.rank to the file's rank"):  # (wrapped by hydra's instantiate)
        build(cfg)


def _dance_dataset(root, num_videos=2):
    from svi.toy.world import write_dataset

    summary = write_dataset(root, num_videos=num_videos, num_frames=17, height=32, width=32, progress=False)
    rows = []
    for i, row in enumerate(csv.DictReader(open(summary["csv"]))):
        write_pose_video(root / "poses" / f"p{i}.mp4", 17)
        rows.append((f"toyworld/{row['Filename']}", row["Video Description"], f"poses/p{i}.mp4"))
    with open(root / "metadata.csv", "w", newline="") as f:
        csv.writer(f).writerows([("path", "caption", "pose"), *rows])
    return root


def test_training_clips_carry_their_own_pose_frames(tmp_path):
    from svi.data.video import VideoClipDataset

    root = _dance_dataset(tmp_path)
    ds = VideoClipDataset(str(root), num_frames=9, height=32, width=32, max_stride=2, condition=DanceCondition())
    for epoch in range(3):
        ds.set_epoch(epoch)
        item = ds[1]
        assert item["extras"]["pose"].shape == (3, 9, 32, 32)
        assert frame_index(item["extras"]["pose"]) == item["frame_indices"].tolist()  # the clip's own frames


@pytest.mark.slow
def test_dance_trains_from_videos_and_a_cache_resumes_and_generates(tmp_path, caplog):
    """svi-train (raw videos, then a latent cache), exact resume with the pose encoder, svi-generate."""
    from svi.generate import generate
    from svi.prepare import prepare
    from svi.train import train
    from tests.sampling.conftest import compose_generate, write_image

    root = _dance_dataset(tmp_path / "data")
    geometry = ["data.num_frames=9", "data.height=32", "data.width=32"]
    run = tmp_path / "run"
    train(compose_config("train", [*FAST, "data=folders", f"data.root={root}", *geometry, "trainer.max_steps=4",
                                   "callbacks.model_checkpoint.every_n_train_steps=2", f"paths.output_dir={run}"]))
    exported = (run / "adapter" / "svi_modules.safetensors")
    assert exported.is_file()
    resumed = tmp_path / "resumed"
    train(compose_config("train", [*FAST, "data=folders", f"data.root={root}", *geometry, "trainer.max_steps=4",
                                   f"ckpt_path={run / 'checkpoints' / 'step000002.ckpt'}", f"paths.output_dir={resumed}"]))
    from safetensors.torch import load_file

    a, b = load_file(str(exported)), load_file(str(resumed / "adapter" / "svi_modules.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # exact resume of the encoder

    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from svi.paths import CONF_DIR

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        prep = compose("prepare", ["backbone=tiny", "condition=dance", f"data.root={root}", *geometry,
                                   f"out={tmp_path / 'cache'}", "clips_per_video=1", "backbone_name=tiny",
                                   "progress=false"])
    prepare(prep)
    train(compose_config("train", [*FAST, "data=cache", f"data.root={tmp_path / 'cache'}", *geometry,
                                   "data.backbone_name=tiny", "trainer.max_steps=2", f"paths.output_dir={tmp_path / 'c'}"]))

    pose = write_pose_video(tmp_path / "dance.mp4", 21)
    prompts = tmp_path / "p.txt"
    prompts.write_text("a person dances\n")
    out = tmp_path / "gen"
    with caplog.at_level("INFO", logger="svi.generate"):
        summary = generate(compose_generate(["backbone=tiny", "condition=dance", "num_frames=9",
                                             "flow.num_inference_steps=2", "progress=false",
                                             f"image={write_image(tmp_path / 'i.png')}", f"prompts={prompts}",
                                             f"inputs.pose={pose}", f"lora.path={run / 'adapter'}", f"out={out}"]))
    assert "14 adapter tensors of condition 'dance'" in caplog.text  # the trained pose encoder was loaded
    assert summary["clips_total"] == 1 + (21 - 9) // 8  # the pose video's length decides the clips
    state = json.loads((out / "state" / "config.json").read_text())["config"]
    assert state["fps"] == 25.0 and state["inputs_sha256"]["pose"]
