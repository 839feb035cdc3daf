"""LoRA files for generation: the official SVI format and our adapters, merged into the tiny Wan transformer."""

import pytest
import torch
from safetensors.torch import save_file

from svi.backbones import LoraSpec, attach_lora, save_adapter
from svi.backbones.official import load_lora, read_lora, to_diffusers_name
from tests.sampling.conftest import make_tiny_stack

RANK = 4
# Official (DiffSynth / original Wan) name -> diffusers name, written out independently of the loader.
OFFICIAL_TO_DIFFUSERS = {"self_attn.q": "attn1.to_q", "self_attn.k": "attn1.to_k", "self_attn.v": "attn1.to_v",
                         "self_attn.o": "attn1.to_out.0", "cross_attn.q": "attn2.to_q", "cross_attn.k": "attn2.to_k",
                         "cross_attn.v": "attn2.to_v", "cross_attn.o": "attn2.to_out.0", "ffn.0": "ffn.net.0.proj",
                         "ffn.2": "ffn.net.2"}


def _official_state_dict(transformer, prefix: str, seed: int = 0):
    """Random LoRA tensors under the official SVI key pattern, plus a non-LoRA Dance tensor."""
    g = torch.Generator().manual_seed(seed)
    named = dict(transformer.named_modules())
    sd, expected = {}, {}
    for i in range(len(transformer.blocks)):
        for official, diffusers in OFFICIAL_TO_DIFFUSERS.items():
            w = named[f"blocks.{i}.{diffusers}"].weight
            a = torch.randn(RANK, w.shape[1], generator=g) * 0.1
            b = torch.randn(w.shape[0], RANK, generator=g) * 0.1
            sd[f"{prefix}blocks.{i}.{official}.lora_A.default.weight"] = a
            sd[f"{prefix}blocks.{i}.{official}.lora_B.default.weight"] = b
            expected[f"blocks.{i}.{diffusers}"] = (w.detach().clone() + b @ a)  # W + B @ A, scale 1
    sd["dwpose_embedding.0.weight"] = torch.randn(8, 3, 3, 3, 3, generator=g)
    return sd, expected


def _forward(transformer, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(1, 36, 2, 4, 4, generator=g)
    text = torch.randn(1, 512, 32, generator=g)
    image = torch.randn(1, 257, 24, generator=g)
    with torch.no_grad():
        return transformer(hidden_states=x, timestep=torch.tensor([700.0]), encoder_hidden_states=text,
                           encoder_hidden_states_image=image, return_dict=False)[0]


@pytest.mark.parametrize("prefix", ["pipe.dit.", ""], ids=["pipe.dit.", "bare"])
def test_official_svi_lora_merges_as_w_plus_ba_and_matches_diffusers(tmp_path, prefix):
    from diffusers.loaders.lora_conversion_utils import _convert_non_diffusers_wan_lora_to_diffusers

    ours = make_tiny_stack(["transformer"]).transformer
    sd, expected = _official_state_dict(ours, prefix)
    path = tmp_path / "svi-shot.safetensors"
    save_file(sd, str(path))

    weights = load_lora(ours, path)
    assert weights.layout == "official" and weights.rank == RANK
    assert set(weights.extras) == {"dwpose_embedding.0.weight"}
    assert torch.equal(weights.extras["dwpose_embedding.0.weight"], sd["dwpose_embedding.0.weight"])
    named = dict(ours.named_modules())
    assert len(expected) == 10 * len(ours.blocks)
    for name, w in expected.items():
        assert torch.allclose(named[name].weight, w, atol=1e-6), name

    # Independent route: diffusers' own converter + a peft adapter (unmerged), scale 1 without alpha keys.
    ref = make_tiny_stack(["transformer"]).transformer
    renamed = {"diffusion_model." + k.removeprefix(prefix).replace(".default.", "."): v
               for k, v in sd.items() if ".lora_" in k}
    ref.load_lora_adapter(_convert_non_diffusers_wan_lora_to_diffusers(renamed), prefix="transformer",
                          adapter_name="svi")
    out_ref, out = _forward(ref), _forward(ours)
    assert torch.allclose(out, out_ref, atol=1e-5), (out - out_ref).abs().max()
    assert not torch.allclose(out, _forward(make_tiny_stack(["transformer"]).transformer), atol=1e-3)


def test_our_adapter_file_and_directory_load_with_their_alpha(tmp_path):
    trained = make_tiny_stack(["transformer"]).transformer
    spec = LoraSpec(rank=4, alpha=8, targets=["to_q", "to_k", "to_v", "to_out.0", "ffn.net.0.proj", "ffn.net.2"])
    attach_lora(trained, spec)
    g = torch.Generator().manual_seed(3)
    for name, p in trained.named_parameters():
        if "lora_B" in name:  # B starts at zero; make the adapter do something
            p.data = torch.randn(p.shape, generator=g) * 0.1
    save_adapter(tmp_path / "adapter", trained, spec, modules={"adapters.0.weight": torch.ones(2)})
    expected = _forward(trained)

    for source in (tmp_path / "adapter", tmp_path / "adapter" / "pytorch_lora_weights.safetensors"):
        fresh = make_tiny_stack(["transformer"]).transformer
        weights = load_lora(fresh, source)
        assert weights.layout == "diffusers"
        assert all(s == 2.0 for _, _, s in weights.modules.values())  # alpha / r from the header
        assert torch.allclose(_forward(fresh), expected, atol=1e-5)
        assert ("adapters.0.weight" in weights.extras) == source.is_dir()


def test_wrong_or_foreign_lora_files_fail_clearly(tmp_path):
    transformer = make_tiny_stack(["transformer"]).transformer
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_lora(tmp_path / "none.safetensors")
    save_file({"dwpose_embedding.0.weight": torch.ones(2)}, str(tmp_path / "pose_only.safetensors"))
    with pytest.raises(ValueError, match="no LoRA tensors"):
        read_lora(tmp_path / "pose_only.safetensors")
    save_file({"blocks.99.self_attn.q.lora_A.weight": torch.ones(4, 64),
               "blocks.99.self_attn.q.lora_B.weight": torch.ones(64, 4)}, str(tmp_path / "deep.safetensors"))
    with pytest.raises(ValueError, match="match no module"):
        load_lora(transformer, tmp_path / "deep.safetensors")
    save_file({"blocks.0.self_attn.q.lora_A.weight": torch.ones(4, 5000),
               "blocks.0.self_attn.q.lora_B.weight": torch.ones(64, 4)}, str(tmp_path / "big.safetensors"))
    with pytest.raises(ValueError, match="different Wan model"):
        load_lora(transformer, tmp_path / "big.safetensors")


def test_original_wan_names_map_to_diffusers():
    assert to_diffusers_name("blocks.3.cross_attn.k_img") == "blocks.3.attn2.add_k_proj"
    assert to_diffusers_name("blocks.0.self_attn.o") == "blocks.0.attn1.to_out.0"
    assert to_diffusers_name("blocks.12.ffn.0") == "blocks.12.ffn.net.0.proj"
    assert to_diffusers_name("head.head") == "proj_out"
    assert to_diffusers_name("blocks.0.attn1.to_q") == "blocks.0.attn1.to_q"  # already diffusers
