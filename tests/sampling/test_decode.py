"""Streaming decode: pieces fed one after another (and across a resume) equal one decode of the whole."""

import pytest
import torch

from svi.sampling.decode import StreamingDecoder, frames_for_latents, latents_for_frames
from tests.sampling.conftest import make_tiny_stack


@pytest.fixture(scope="module")
def vae_stack():
    return make_tiny_stack(("transformer", "vae"))


def _pieces(decoder, z, cuts):
    out, a = [], 0
    for b in [*cuts, z.shape[2]]:
        out.append(decoder.feed(z[:, :, a:b]))
        a = b
    return out


def test_wan_vae_streaming_equals_one_shot_decode(vae_stack):
    z = torch.randn(2, 16, 7, 4, 4, generator=torch.Generator().manual_seed(0))
    whole = vae_stack.decode_latents(z)
    assert whole.shape == (2, 3, frames_for_latents(7), 32, 32)
    decoder = StreamingDecoder(vae_stack.vae)
    assert decoder.causal
    pieces = _pieces(decoder, z, [1, 4])
    assert [p.shape[2] for p in pieces] == [1, 12, 12]  # latent 0 is one frame, every later latent four
    assert torch.equal(torch.cat(pieces, dim=2), whole)
    # the cache survives a resume: state -> a fresh decoder -> the rest
    first = StreamingDecoder(vae_stack.vae)
    head = first.feed(z[:, :, :3])
    state = {k: v.clone() for k, v in first.state_dict().items()}
    assert state["decoder.decoded"] == 3 and state["decoder.kinds"].dtype == torch.int8
    resumed = StreamingDecoder(vae_stack.vae)
    resumed.load_state_dict(state)
    assert torch.equal(torch.cat([head, resumed.feed(z[:, :, 3:])], dim=2), whole)
    # the cache carries the past: another prefix changes how the same latents decode
    other = StreamingDecoder(vae_stack.vae)
    other.feed(torch.randn(2, 16, 3, 4, 4))
    assert not torch.allclose(other.feed(z[:, :, 3:]), whole[:, :, frames_for_latents(3):], atol=1e-4)


class FrameLocalAutoencoder(torch.nn.Module):
    """Each latent decodes on its own (latent 0 to one frame, later ones to four): no causal cache."""

    def __init__(self):
        super().__init__()
        self.proj = torch.nn.Linear(4, 3 * 4 * 2 * 2)
        self.config = type("Config", (), {"latents_mean": [0.0] * 4, "latents_std": [1.0] * 4})()

    @property
    def device(self):
        return self.proj.weight.device

    @property
    def dtype(self):
        return self.proj.weight.dtype

    def decode(self, z, return_dict=False):
        B, C, T, h, w = z.shape
        x = self.proj(z.permute(0, 2, 3, 4, 1)).view(B, T, h, w, 3, 4, 2, 2)
        x = x.permute(0, 4, 1, 5, 2, 6, 3, 7).reshape(B, 3, 4 * T, 2 * h, 2 * w)
        return (torch.cat([x[:, :, :1], x[:, :, 4:]], dim=2).tanh(),)


def test_an_autoencoder_without_causal_cache_streams_with_left_context():
    vae = FrameLocalAutoencoder()
    z = torch.randn(1, 4, 6, 3, 3, generator=torch.Generator().manual_seed(2))
    whole = vae.decode(z)[0]
    decoder = StreamingDecoder(vae)
    assert not decoder.causal
    first = _pieces(decoder, z, [2, 3])
    state = decoder.state_dict()
    resumed = StreamingDecoder(vae)
    resumed.load_state_dict(state)
    assert torch.equal(torch.cat(first, dim=2), whole[:, :, :frames_for_latents(6)])
    assert resumed.decoded == 6 and torch.equal(resumed._tail, decoder._tail)


def test_frame_and_latent_counts():
    assert [frames_for_latents(n) for n in (0, 1, 2, 21)] == [0, 1, 5, 81]
    assert [latents_for_frames(f) for f in (1, 2, 5, 6, 81, 161)] == [1, 2, 2, 3, 21, 41]
    with pytest.raises(ValueError, match="at least one frame"):
        latents_for_frames(0)
