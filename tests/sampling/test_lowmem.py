"""Low-memory generation (lowmem.fp8, lowmem.offload) on the tiny stack, on the CPU.

Offloading moves weights, not numbers: with the CPU as both onload and offload device every mode must give
bit-identical outputs. fp8 storage rounds each cast Linear weight to float8_e4m3fn once; the test checks it
equals a model whose weights were rounded by hand, and bounds the change of the output.
"""

import numpy as np
import pytest
import torch

from svi.backbones.lowmem import OFFLOAD, LowMemSpec, execution_device, place_stack
from svi.backbones.official import convert_lora_file
from svi.generate import generate
from svi.sampling.media import read_mp4
from tests.sampling.conftest import SMALL, compose_generate, make_tiny_stack
from tests.sampling.test_lora_convert import _trained_adapter
from tests.sampling.test_lora_files import _forward


@pytest.mark.parametrize("offload", OFFLOAD)
def test_offload_modes_give_identical_outputs(offload):
    reference = _forward(make_tiny_stack(["transformer"]).transformer)
    stack = make_tiny_stack()
    place_stack(stack, "cpu", LowMemSpec(offload=offload, blocks_per_group=1))
    assert execution_device(stack) == torch.device("cpu")
    assert torch.equal(_forward(stack.transformer), reference)
    assert torch.equal(_forward(stack.transformer), reference)  # hooks survive a second call


def _forward_in(transformer, dtype, seed=1):
    g = torch.Generator().manual_seed(seed)
    x, text, image = (torch.randn(*shape, generator=g).to(dtype)
                      for shape in ((1, 36, 2, 4, 4), (1, 512, 32), (1, 257, 24)))
    with torch.no_grad():
        return transformer(hidden_states=x, timestep=torch.tensor([700.0]), encoder_hidden_states=text,
                           encoder_hidden_states_image=image, return_dict=False)[0].float()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_fp8_storage_equals_weights_rounded_to_fp8(dtype):
    from diffusers.hooks.layerwise_casting import DEFAULT_SKIP_MODULES_PATTERN

    stack = make_tiny_stack()
    stack.transformer.to(dtype)
    full = _forward_in(stack.transformer, dtype)
    place_stack(stack, "cpu", LowMemSpec(fp8=True, offload="group"))
    stored = {p.dtype for p in stack.transformer.parameters()}
    assert torch.float8_e4m3fn in stored and stack.transformer.dtype == dtype  # computes in the loaded dtype
    out = _forward_in(stack.transformer, dtype)

    # the same rounding by hand: every Linear outside the skip patterns (norms, embedders, proj_out)
    rounded = make_tiny_stack(["transformer"]).transformer.to(dtype)
    skip = DEFAULT_SKIP_MODULES_PATTERN + tuple(rounded._skip_layerwise_casting_patterns)
    import re

    with torch.no_grad():
        for name, module in rounded.named_modules():
            if isinstance(module, (torch.nn.Linear, torch.nn.Conv3d)) and not any(re.search(p, name) for p in skip):
                for p in module.parameters(recurse=False):
                    p.copy_(p.to(torch.float8_e4m3fn).to(dtype))
    assert torch.equal(out, _forward_in(rounded, dtype))
    rel = ((out - full).abs().max() / full.abs().max()).item()
    print(f"fp8 storage, {dtype} compute: max |out - full| / max |full| = {rel:.2e}")
    assert 0 < rel < 0.05, rel  # measured: 1.1e-2 (fp32 compute), about the same in bf16


def _run(out, image, prompts, *extra):
    generate(compose_generate([*SMALL, f"image={image}", f"prompts={prompts}", "num_clips=2", f"out={out}",
                               *extra]))
    return read_mp4(out / "video.mp4")


@pytest.mark.slow
def test_generate_with_every_lora_format_and_lowmem_option(image_file, prompt_file, tmp_path):
    """svi-generate: lora.path in each format and each offload mode give the same frames; fp8 stays close."""
    _trained_adapter(tmp_path / "adapter", alpha=8)
    for fmt in ("comfyui", "diffsynth"):
        convert_lora_file(tmp_path / "adapter", tmp_path / f"{fmt}.safetensors", fmt)
    plain = _run(tmp_path / "plain", image_file, prompt_file, f"lora.path={tmp_path / 'adapter'}")
    base = _run(tmp_path / "base", image_file, prompt_file)
    assert np.abs(plain.astype(int) - base).mean() > 1  # the LoRA changes the frames
    for name, extra in {"comfy_group": ["lora.path=" + str(tmp_path / "comfyui.safetensors"), "lowmem.offload=group"],
                        "diffsynth_model": ["lora.path=" + str(tmp_path / "diffsynth.safetensors"),
                                            "lowmem.offload=model"],
                        "seq": [f"lora.path={tmp_path / 'adapter'}", "lowmem.offload=sequential"]}.items():
        assert np.array_equal(_run(tmp_path / name, image_file, prompt_file, *extra), plain), name
    fp8 = _run(tmp_path / "fp8", image_file, prompt_file, f"lora.path={tmp_path / 'adapter'}", "lowmem.fp8=true")
    diff = np.abs(fp8.astype(int) - plain)
    print(f"fp8 frames vs bf16/fp32: mean abs uint8 difference {diff.mean():.3f}, max {diff.max()}")
    assert diff.mean() < 4, diff.mean()  # uint8 frames of the random tiny model
