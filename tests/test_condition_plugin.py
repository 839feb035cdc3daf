"""A condition type and an image-error source are plug-ins: defined here, in this file only, they train from
raw videos and from a latent cache and generate through svi-generate, with no edit anywhere else.

`StrengthCondition` is a made-up type: every clip carries one number (a dataset row names a text file holding
it; a schedule entry gives it directly), fed to the DiT through a zero-initialised adapter added to the patch
embeddings. `ConstantImageError` is a made-up E_img source.
"""

from __future__ import annotations

import csv
import json
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Mapping, Sequence

import pytest
import torch
from hydra.utils import instantiate
from safetensors.torch import load_file
from torch import Tensor, nn

from svi.conditions import ClipGeometry, ShotCondition
from svi.config import register_schema
from svi.erft import ImageErrorRequest, ImageErrorSource
from tests.conftest import compose_config

pytest.importorskip("decord")


class StrengthCondition(ShotCondition):
    """Shot plus one number per clip, `strength`, added to the patch embeddings through a zero-initialised linear."""

    extra_fields = ("strength",)

    def __init__(self, name: str = "strength", num_motion_frames: int = 1, ref_pad_num: int = -1,
                 mask_all_motion_frames: bool = False, prompt_per_clip: bool = False, trainable: bool = True):
        super().__init__(name, num_motion_frames, ref_pad_num, mask_all_motion_frames, prompt_per_clip)
        self.trainable = trainable
        self.adapter: nn.Linear | None = None
        self.current: Tensor | None = None  # (B, 1) while a forward runs inside forward_context
        self.seen: list[Tensor] = []  # every strength the adapter added (the test reads it)

    # data
    def read_row(self, row: Mapping[str, str], base: str, where: str) -> dict[str, Any]:
        value = row.get("strength", "")
        path = Path(base) / value
        if not value or not path.is_file():
            raise FileNotFoundError(f"{where}: strength file {path} does not exist; give every row a `strength` "
                                    f"column naming a text file that holds one number")
        return {"strength": float(path.read_text())}

    def load_extras(self, extras, span) -> dict[str, Tensor]:
        return {"strength": torch.tensor([extras["strength"]])}

    def encode_extras(self, stack, raw: Mapping[str, Tensor]) -> dict[str, Tensor]:
        return {"strength": raw["strength"].float().reshape(-1, 1)} if "strength" in raw else {}

    def random_extras(self, batch_size: int, geometry: ClipGeometry, generator) -> dict[str, Tensor]:
        return {"strength": torch.rand(batch_size, 1, generator=generator)}

    # the network
    def attach(self, transformer: nn.Module) -> nn.Module:
        dim = transformer.config.num_attention_heads * transformer.config.attention_head_dim
        self.adapter = nn.Linear(1, dim)
        nn.init.zeros_(self.adapter.weight)
        nn.init.zeros_(self.adapter.bias)
        self.adapter.requires_grad_(self.trainable)
        transformer.patch_embedding.register_forward_hook(self._add)
        return self.adapter

    def _add(self, module, args, out: Tensor) -> Tensor:  # out (B, dim, T, h, w)
        if self.current is None:
            return out
        self.seen.append(self.current.detach().cpu().clone())
        return out + self.adapter(self.current.to(out.dtype)).to(out.dtype)[:, :, None, None, None]

    @contextmanager
    def forward_context(self, extras):
        self.current = (extras or {}).get("strength")
        try:
            yield
        finally:
            self.current = None

    def adapter_state_dict(self) -> dict[str, Tensor]:
        return {f"strength_embedding.{k}": v for k, v in self.adapter.state_dict().items()}

    def load_adapter_tensors(self, tensors: Mapping[str, Tensor]) -> list[str]:
        mine = {k.removeprefix("strength_embedding."): v for k, v in tensors.items()
                if k.startswith("strength_embedding.")}
        if mine:
            self.adapter.load_state_dict(mine)
        return [f"strength_embedding.{k}" for k in mine]

    # generation
    def check_schedule(self, schedule, inputs) -> None:
        for clip in schedule:
            value = clip.extras.get("strength", inputs.get("strength"))
            if not isinstance(value, (int, float)):
                raise ValueError(f"clip {clip.index}: strength must be a number (a schedule entry's `strength`, "
                                 f"or inputs.strength for every clip), got {value!r}")

    def clip_extras(self, stack, schedule, index: int, inputs, geometry: ClipGeometry) -> dict[str, Tensor]:
        value = schedule[index].extras.get("strength", inputs.get("strength"))
        return {"strength": torch.tensor([[float(value)]])}


class ConstantImageError(ImageErrorSource):
    """E_img = `value` on every selected sample (needs no bank)."""

    def __init__(self, value: float = 0.0):
        self.value = value
        self.calls = 0

    def ready(self, memory) -> bool:
        return memory is not None

    def __call__(self, request: ImageErrorRequest) -> Tensor:
        self.calls += 1
        e_img = request.zeros()
        e_img[request.select] = self.value
        return e_img


register_schema("condition", "strength", StrengthCondition)  # `condition=strength` from now on
register_schema("img_source", "constant", ConstantImageError)  # `img_source=constant`

GEOMETRY = ["data.num_frames=9", "data.height=32", "data.width=32"]
FAST = ["experiment=svi_shot", "debug=tiny", "lora.rank=4", "lora.alpha=4", "callbacks.rollout.enabled=false",
        "+trainer.enable_progress_bar=false", "trainer.max_steps=4"]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """3 toy videos with a metadata.csv whose `strength` column names a text file per video."""
    from svi.toy.world import write_dataset

    root = tmp_path_factory.mktemp("strength_data")
    summary = write_dataset(root, num_videos=3, num_frames=17, height=32, width=32, progress=False)
    rows = []
    for i, row in enumerate(csv.DictReader(open(summary["csv"]))):
        (root / f"s{i}.txt").write_text(f"{0.25 * (i + 1)}\n")
        rows.append((f"toyworld/{row['Filename']}", row["Video Description"], f"s{i}.txt"))
    with open(root / "metadata.csv", "w", newline="") as f:
        csv.writer(f).writerows([("path", "caption", "strength"), *rows])
    return root


def _train(cfg):
    from svi.train import build

    model, data, trainer = build(cfg)
    trainer.fit(model, datamodule=data)
    return model


def test_zero_initialised_adapter_leaves_the_output_unchanged(tiny_stack):
    import copy

    stack = copy.deepcopy(tiny_stack)
    x, y = torch.randn(1, 16, 2, 4, 4), torch.randn(1, 20, 2, 4, 4)
    text, image, t = torch.randn(1, 512, 32), torch.randn(1, 257, 24), torch.tensor([500.0])
    before = stack.velocity(x, y, t, text, image)
    condition = StrengthCondition()
    condition.attach(stack.transformer)
    with condition.forward_context({"strength": torch.tensor([[0.7]])}):
        assert torch.equal(stack.velocity(x, y, t, text, image), before)
    nn.init.normal_(condition.adapter.weight)  # (a constant shift of every channel would vanish in the LayerNorms)
    with condition.forward_context({"strength": torch.tensor([[0.7]])}):
        assert not torch.allclose(stack.velocity(x, y, t, text, image), before)  # the adapter is wired in
    assert torch.equal(stack.velocity(x, y, t, text, image), before)  # outside the context: nothing added


def test_trains_from_raw_videos_and_exports_its_adapter(dataset, tmp_path):
    cfg = compose_config("train", [*FAST, "condition=strength", "data=folders", f"data.root={dataset}", *GEOMETRY,
                                   "data.batch_size=3", f"paths.output_dir={tmp_path}"])
    model = _train(cfg)
    seen = torch.cat(model.condition.seen).flatten().tolist()
    assert sorted(set(round(v, 2) for v in seen)) == [0.25, 0.5, 0.75]  # each row's number reached the DiT
    assert model.condition.adapter.weight.abs().sum() > 0  # gradients reached the zero-initialised adapter
    exported = load_file(str(tmp_path / "adapter" / "svi_modules.safetensors"))
    assert set(exported) == {"strength_embedding.weight", "strength_embedding.bias"}
    assert torch.equal(exported["strength_embedding.weight"], model.condition.adapter.weight.detach().cpu())


def test_trains_on_synthetic_latents_with_random_extras(tmp_path):
    model = _train(compose_config("train", [*FAST, "condition=strength", f"paths.output_dir={tmp_path}"]))
    assert model.condition.seen and all(s.shape == (1, 1) for s in model.condition.seen)


def test_a_row_without_its_file_fails_before_training(dataset, tmp_path):
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "metadata.csv").write_text((dataset / "metadata.csv").read_text().replace("s1.txt", "gone.txt"))
    for name in ("s0.txt", "s2.txt"):
        (broken / name).write_text((dataset / name).read_text())
    cfg = compose_config("train", [*FAST, "condition=strength", "data=folders", f"data.root={broken}", *GEOMETRY,
                                   f"paths.output_dir={tmp_path / 'run'}"])
    data = instantiate(cfg.data)
    with pytest.raises(FileNotFoundError, match=r"metadata\.csv, row 2: strength file .*gone\.txt does not exist; "
                                                r"give every row"):
        data.setup("fit")  # Lightning calls this before the first training step


def test_svi_prepare_caches_the_extras_and_training_reads_them(dataset, tmp_path):
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from svi.paths import CONF_DIR
    from svi.prepare import prepare

    cache = tmp_path / "cache"
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("prepare", ["backbone=tiny", "condition=strength", f"data.root={dataset}", *GEOMETRY,
                                  f"out={cache}", "clips_per_video=1", "backbone_name=tiny", "progress=false"])
    prepare(cfg)
    shard = load_file(str(next(cache.glob("shard_*.safetensors"))))
    assert sorted(shard["extra.strength"].flatten().tolist()) == [0.25, 0.5, 0.75]
    train_cfg = compose_config("train", [*FAST, "condition=strength", "data=cache", f"data.root={cache}",
                                         *GEOMETRY, "data.backbone_name=tiny", "data.batch_size=3",
                                         f"paths.output_dir={tmp_path / 'run'}"])
    model = _train(train_cfg)
    assert sorted(set(round(v, 2) for v in torch.cat(model.condition.seen).flatten().tolist())) == [0.25, 0.5, 0.75]


def test_generates_through_svi_generate_with_per_clip_values_and_its_adapter(dataset, tmp_path, caplog):
    from svi.generate import generate
    from tests.sampling.conftest import compose_generate, write_image

    train_dir = tmp_path / "train"
    _train(compose_config("train", [*FAST, "condition=strength", "data=folders", f"data.root={dataset}", *GEOMETRY,
                                    "data.batch_size=3", f"paths.output_dir={train_dir}"]))
    schedule = tmp_path / "s.yaml"
    schedule.write_text("- {prompt: a red disc, strength: 0.3}\n- {prompt: a red disc, strength: 0.9}\n")
    image = write_image(tmp_path / "image.png")
    overrides = ["backbone=tiny", "condition=strength", "num_frames=5", "height=32", "width=32",
                 "flow.num_inference_steps=2", "cfg=1.0", "progress=false", f"image={image}", "use_first_prompt_only=false",
                 f"prompts={schedule}", f"lora.path={train_dir / 'adapter'}", f"out={tmp_path / 'out'}"]
    with caplog.at_level("INFO", logger="svi.generate"):
        summary = generate(compose_generate(overrides))
    assert summary["clips_done"] == 2 and (tmp_path / "out" / "video.mp4").is_file()
    assert "2 adapter tensors of condition 'strength'" in caplog.text  # the exported adapter was loaded
    specs = [json.loads((tmp_path / "out" / "state" / f"clip_{k:04d}.json").read_text())["spec"] for k in range(2)]
    assert [c["extras"] for c in specs] == [{"strength": 0.3}, {"strength": 0.9}]  # what a resume compares
    # a non-number is refused before anything is loaded
    schedule.write_text("- {prompt: a red disc, strength: loud}\n")
    with pytest.raises(ValueError, match="clip 0: strength must be a number"):
        generate(compose_generate([*overrides[:-1], f"out={tmp_path / 'bad'}"]))
    assert not (tmp_path / "bad" / "state").exists()


def test_the_sampler_hands_each_clip_its_own_values_and_loads_the_adapter(tmp_path):
    from svi.sampling import GenerationRequest, SVIClipSampler, build_schedule
    from svi.sampling.media import load_image
    from tests.sampling.conftest import make_tiny_stack, write_image

    stack = make_tiny_stack()
    condition = StrengthCondition()
    condition.attach(stack.transformer)
    used = condition.load_adapter_tensors({"strength_embedding.weight": torch.full((64, 1), 0.5),
                                           "strength_embedding.bias": torch.zeros(64), "dwpose_embedding.0": torch.ones(1)})
    assert used == ["strength_embedding.weight", "strength_embedding.bias"] and condition.adapter.weight[0, 0] == 0.5
    schedule_file = tmp_path / "s.yaml"
    schedule_file.write_text("- {prompt: a, strength: 0.1}\n- {prompt: b, strength: 0.2}\n- {prompt: c}\n")
    schedule = build_schedule(schedule_file, cfg=1.0, extra_fields=condition.extra_fields)
    condition.check_schedule(schedule, {"strength": 0.7})  # clip 2 takes the whole-video input
    image = load_image(write_image(tmp_path / "i.png"), 32, 32)
    request = GenerationRequest(image=image, schedule=schedule, num_frames=5, height=32, width=32,
                                inputs={"strength": 0.7})
    sampler = SVIClipSampler(condition, stack=stack, flow={"num_inference_steps": 2}, progress=False)
    frames = [c.frames for c in sampler.stream(request)]
    assert len(frames) == 3
    per_step = [float(s) for s in torch.cat(condition.seen).flatten()]
    assert per_step == pytest.approx([0.1, 0.1, 0.2, 0.2, 0.7, 0.7])  # 2 steps per clip, each clip its own value


def test_an_image_error_source_is_a_plugin_too(tmp_path):
    cfg = compose_config("train", [*FAST, "img_source=constant", "img_source.value=1000.0", "injection.p_img=1.0",
                                   "injection.p_clean=0.0", "memory.warmup_steps=0", f"paths.output_dir={tmp_path}"])
    from svi.train import build

    model, data, trainer = build(cfg)
    assert isinstance(model.image_error, ConstantImageError)
    conditions = []
    velocity = model.stack.velocity

    def spy(x_s, y, *args):
        conditions.append(y.detach().clone())
        return velocity(x_s, y, *args)

    model.stack.velocity = spy
    trainer.fit(model, datamodule=data)
    injected = [y for y in conditions if y[:, 4:, :3].abs().max() > 500]  # E_img = 1000 on the first 3 latents
    assert model.image_error.calls >= 1 and injected
    assert all(y[:, 4:, 3:].abs().max() < 500 for y in injected)  # only the first y_error_num latent frames
