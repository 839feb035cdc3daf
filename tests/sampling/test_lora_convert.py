"""svi-lora: our adapter <-> DiffSynth (official SVI) <-> ComfyUI key formats, on the tiny Wan transformer.

Each conversion must load back to the same network (merged outputs bit-identical) and a round trip must
give back the same tensors; files for other models, unknown formats and a wrong lora.rank fail clearly.
"""

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from svi.backbones import LoraSpec, attach_lora, save_adapter
from svi.backbones.lora import init_lora_from
from svi.backbones.official import (FORMATS, convert_lora_file, detect_format, load_lora, read_lora,
                                    to_diffusers_name, to_original_name)
from svi.lora_cli import main as svi_lora
from tests.sampling.conftest import make_tiny_stack
from tests.sampling.test_lora_files import _forward

TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "ffn.net.0.proj", "ffn.net.2"]


def _trained_adapter(directory, rank=4, alpha=4, seed=3):
    """A tiny transformer with a LoRA whose B is random (non-zero), saved as our adapter directory."""
    transformer = make_tiny_stack(["transformer"]).transformer
    spec = LoraSpec(rank=rank, alpha=alpha, targets=TARGETS)
    attach_lora(transformer, spec)
    g = torch.Generator().manual_seed(seed)
    for name, p in transformer.named_parameters():
        if "lora_B" in name:
            p.data = torch.randn(p.shape, generator=g) * 0.1
    save_adapter(directory, transformer, spec)
    return transformer, spec


def _merged_output(path, expert=None):
    fresh = make_tiny_stack(["transformer"]).transformer
    load_lora(fresh, path, expert=expert)
    return _forward(fresh)


@pytest.mark.parametrize("alpha", [4, 8], ids=["alpha=r", "alpha=2r"])
def test_every_format_loads_to_the_same_network_and_round_trips(tmp_path, alpha):
    trained, spec = _trained_adapter(tmp_path / "adapter", alpha=alpha)
    original = load_file(str(tmp_path / "adapter" / "pytorch_lora_weights.safetensors"))
    reference = _merged_output(tmp_path / "adapter")
    assert torch.allclose(reference, _forward(trained), atol=1e-5)  # merged = peft's unmerged adapter
    assert not torch.allclose(reference, _forward(make_tiny_stack(["transformer"]).transformer), atol=1e-3)

    for fmt in FORMATS:
        out = tmp_path / f"lora.{fmt}.safetensors"
        convert_lora_file(tmp_path / "adapter", out, fmt)
        keys = list(load_file(str(out)))
        assert detect_format(keys) == fmt
        assert read_lora(out).format == fmt
        assert torch.equal(_merged_output(out), reference), fmt  # the same W + s B A, bit for bit

        # init_lora_from (training init) reads every format into an attached adapter
        fresh = make_tiny_stack(["transformer"]).transformer
        attach_lora(fresh, spec)
        init_lora_from(fresh, out, spec)
        assert torch.allclose(_forward(fresh), _forward(trained), atol=1e-6), fmt

        back = tmp_path / f"back.{fmt}"
        convert_lora_file(out, back, "diffusers")
        again = load_file(str(back / "pytorch_lora_weights.safetensors"))
        assert set(again) == set(original)
        for k, v in original.items():
            if fmt == "diffsynth" and alpha != 4 and "lora_B" in k:  # no alpha there: the scale lives in B
                assert torch.equal(again[k], v * (alpha / 4)), k
            else:
                assert torch.equal(again[k], v), (fmt, k)

    # the key layouts themselves, as the other tools expect them
    diffsynth = load_file(str(tmp_path / "lora.diffsynth.safetensors"))
    assert "blocks.0.self_attn.q.lora_A.default.weight" in diffsynth and "blocks.1.ffn.2.lora_B.default.weight" in diffsynth
    assert not any("alpha" in k for k in diffsynth)
    comfy = load_file(str(tmp_path / "lora.comfyui.safetensors"))
    assert "diffusion_model.blocks.0.cross_attn.o.lora_B.weight" in comfy
    assert float(comfy["diffusion_model.blocks.0.cross_attn.o.alpha"]) == alpha
    assert len(comfy) == 3 * 10 * len(trained.blocks)


def test_comfyui_file_matches_diffusers_own_converter(tmp_path):
    """diffusers reads `diffusion_model.` Wan LoRAs (with .alpha) itself: the same outputs as our merge."""
    from diffusers.loaders.lora_conversion_utils import _convert_non_diffusers_wan_lora_to_diffusers

    _trained_adapter(tmp_path / "adapter", alpha=8)
    convert_lora_file(tmp_path / "adapter", tmp_path / "comfy.safetensors", "comfyui")
    ref = make_tiny_stack(["transformer"]).transformer
    ref.load_lora_adapter(_convert_non_diffusers_wan_lora_to_diffusers(load_file(str(tmp_path / "comfy.safetensors"))),
                          prefix="transformer", adapter_name="svi")
    assert torch.allclose(_forward(ref), _merged_output(tmp_path / "comfy.safetensors"), atol=1e-5)


def test_one_wan22_expert_at_a_time(tmp_path):
    _trained_adapter(tmp_path / "high", seed=1)
    _trained_adapter(tmp_path / "low", seed=2)
    high = load_file(str(tmp_path / "high" / "pytorch_lora_weights.safetensors"))
    low = load_file(str(tmp_path / "low" / "pytorch_lora_weights.safetensors"))
    both = {**high, **{"transformer_2." + k.removeprefix("transformer."): v for k, v in low.items()}}
    save_file(both, str(tmp_path / "both.safetensors"))

    with pytest.raises(ValueError, match="both Wan 2.2 experts.*expert=high or expert=low"):
        read_lora(tmp_path / "both.safetensors")
    assert torch.equal(_merged_output(tmp_path / "both.safetensors", "high"), _merged_output(tmp_path / "high"))
    assert torch.equal(_merged_output(tmp_path / "both.safetensors", "low"), _merged_output(tmp_path / "low"))

    assert svi_lora(["convert", str(tmp_path / "both.safetensors"), str(tmp_path / "low_ds.safetensors"),
                     "--to", "diffsynth", "--expert", "low"]) == 0
    with safe_open(str(tmp_path / "low_ds.safetensors"), framework="pt") as f:
        assert f.metadata()["svi_expert"] == "low"
    assert read_lora(tmp_path / "low_ds.safetensors").expert == "low"
    convert_lora_file(tmp_path / "low_ds.safetensors", tmp_path / "low_back", "diffusers")
    # a single-expert diffusers file uses `transformer.` keys (diffusers: load_into_transformer_2=True)
    assert load_file(str(tmp_path / "low_back/pytorch_lora_weights.safetensors")).keys() == low.keys()
    save_file({"transformer_2." + k.removeprefix("transformer."): v for k, v in low.items()},
              str(tmp_path / "only_low.safetensors"))
    with pytest.raises(ValueError, match="only the low-noise expert"):
        read_lora(tmp_path / "only_low.safetensors", "high")


def test_info_command_reports_format_rank_alpha_modules(tmp_path, capsys):
    _trained_adapter(tmp_path / "adapter", alpha=8)
    convert_lora_file(tmp_path / "adapter", tmp_path / "c.safetensors", "comfyui")
    for path, fmt in ((tmp_path / "adapter", "diffusers"), (tmp_path / "c.safetensors", "comfyui")):
        assert svi_lora(["info", str(path)]) == 0
        out = capsys.readouterr().out
        assert f"format: {fmt}" in out and "rank: 4" in out and "alpha: 8" in out and "modules: 20" in out
        assert "hidden size 64, 2 blocks" in out
    convert_lora_file(tmp_path / "adapter", tmp_path / "d.safetensors", "diffsynth")
    svi_lora(["info", str(tmp_path / "d.safetensors")])
    out = capsys.readouterr().out
    assert "format: diffsynth" in out and "alpha: 4.0" not in out and "alpha: 4" in out and "no alpha" in out


def test_unknown_format_foreign_model_and_wrong_rank_fail_clearly(tmp_path, capsys):
    save_file({"lora_unet_blocks_0_self_attn_q.lora_down.weight": torch.ones(4, 64),
               "lora_unet_blocks_0_self_attn_q.lora_up.weight": torch.ones(64, 4)}, str(tmp_path / "kohya.safetensors"))
    with pytest.raises(ValueError, match="unknown LoRA format: key 'lora_unet_blocks_0_self_attn_q"):
        read_lora(tmp_path / "kohya.safetensors")
    assert svi_lora(["info", str(tmp_path / "kohya.safetensors")]) == 2
    assert "unknown LoRA format" in capsys.readouterr().err
    with pytest.raises(ValueError, match="unknown LoRA format"):
        convert_lora_file(tmp_path / "kohya.safetensors", tmp_path / "x.safetensors", "diffsynth")

    # a 14B LoRA (hidden 5120) on the tiny backbone (hidden 64): the key, both shapes, and the model it fits
    save_file({"blocks.0.self_attn.q.lora_A.default.weight": torch.zeros(2, 5120),
               "blocks.0.self_attn.q.lora_B.default.weight": torch.zeros(5120, 2)}, str(tmp_path / "14b.safetensors"))
    with pytest.raises(ValueError) as err:
        load_lora(make_tiny_stack(["transformer"]).transformer, tmp_path / "14b.safetensors")
    msg = str(err.value)
    for part in ("blocks.0.self_attn.q.lora_A.default.weight", "(5120, 5120)", "(64, 64)", "Wan 14B", "rank 2",
                 "hidden size 64, 2 blocks"):
        assert part in msg, (part, msg)
    spec = LoraSpec(rank=2, alpha=2, targets=TARGETS)
    fresh = make_tiny_stack(["transformer"]).transformer
    attach_lora(fresh, spec)
    with pytest.raises(ValueError, match="different Wan model") as err:
        init_lora_from(fresh, tmp_path / "14b.safetensors", spec)
    assert "(5120, 2)" in str(err.value) and "Wan 14B" in str(err.value)

    # lora.rank differs from the file's
    _trained_adapter(tmp_path / "adapter")
    for fmt in FORMATS:
        convert_lora_file(tmp_path / "adapter", tmp_path / f"r.{fmt}.safetensors", fmt)
        spec = LoraSpec(rank=8, alpha=8, targets=TARGETS)
        fresh = make_tiny_stack(["transformer"]).transformer
        attach_lora(fresh, spec)
        with pytest.raises(ValueError, match=r"rank 4 .*set lora.rank to the file's rank \(lora.rank=4\)"):
            init_lora_from(fresh, tmp_path / f"r.{fmt}.safetensors", spec)
    with pytest.raises(ValueError, match="one .safetensors file"):
        convert_lora_file(tmp_path / "adapter", tmp_path / "dir_out", "comfyui")


def test_extras_travel_with_the_lora(tmp_path):
    transformer = make_tiny_stack(["transformer"]).transformer
    named = dict(transformer.named_modules())
    w = named["blocks.0.attn1.to_q"].weight
    sd = {"blocks.0.self_attn.q.lora_A.default.weight": torch.randn(2, w.shape[1]),
          "blocks.0.self_attn.q.lora_B.default.weight": torch.randn(w.shape[0], 2),
          "dwpose_embedding.0.weight": torch.randn(3, 3)}
    save_file(sd, str(tmp_path / "dance.safetensors"))
    convert_lora_file(tmp_path / "dance.safetensors", tmp_path / "dance_dir", "diffusers")
    assert set(read_lora(tmp_path / "dance_dir").extras) == {"dwpose_embedding.0.weight"}
    written = convert_lora_file(tmp_path / "dance_dir", tmp_path / "c.safetensors", "comfyui")
    assert written[1].name == "c.modules.safetensors"
    convert_lora_file(tmp_path / "dance_dir", tmp_path / "ds.safetensors", "diffsynth")
    assert torch.equal(load_file(str(tmp_path / "ds.safetensors"))["dwpose_embedding.0.weight"],
                       sd["dwpose_embedding.0.weight"])


def test_name_maps_are_inverse():
    for name in ("blocks.3.attn1.to_q", "blocks.0.attn2.to_out.0", "blocks.7.attn2.add_k_proj",
                 "blocks.1.ffn.net.0.proj", "blocks.1.ffn.net.2", "proj_out", "condition_embedder.time_proj"):
        assert to_diffusers_name(to_original_name(name)) == name
    assert to_original_name("blocks.2.attn1.to_out.0") == "blocks.2.self_attn.o"
    with pytest.raises(ValueError, match="no name in the original Wan layout"):
        to_original_name("blocks.0.norm2")
