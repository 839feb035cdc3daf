"""condition=talk: wav2vec2 features, MultiTalk's audio adapters on the stock DiT, three-pass guidance,
speech per clip, and a generated video that carries the speech."""

from __future__ import annotations

import copy
import csv
import json

import numpy as np
import pytest
import torch

from svi.conditions import ClipGeometry, ClipSpan, TalkCondition
from svi.conditions.audio import AudioReadError, Wav2Vec2Features, read_audio
from svi.conditions.talk import audio_windows, pack_windows
from tests.conftest import compose_config

SMALL = dict(feature_layers=2, feature_dim=16, hidden=16, tokens=4, token_dim=8)  # a tiny wav2vec2's shape
SMALL_ARGS = [f"condition.{k}={v}" for k, v in SMALL.items()]


@pytest.fixture(scope="session")
def wav2vec2_dir(tmp_path_factory):
    """A random-init wav2vec2 (2 layers x 16) saved like a real one: loaded through the same path."""
    from transformers import Wav2Vec2Config, Wav2Vec2Model

    path = tmp_path_factory.mktemp("wav2vec2")
    torch.manual_seed(0)
    config = Wav2Vec2Config(hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
                            conv_dim=(8, 8), conv_stride=(5, 4), conv_kernel=(10, 4), num_conv_pos_embeddings=16,
                            num_conv_pos_embedding_groups=2, vocab_size=8)
    Wav2Vec2Model(config).save_pretrained(path)
    return path


def write_wav(path, seconds: float, rate: int = 16000, kind: str = "speech") -> str:
    """A tone with a syllable-like envelope (`speech`) or a ramp whose value is the time in seconds (`ramp`)."""
    import soundfile

    t = np.arange(int(seconds * rate)) / rate
    x = t if kind == "ramp" else 0.3 * np.sin(2 * np.pi * 220 * t) * (0.5 + 0.5 * np.sin(2 * np.pi * 3 * t))
    soundfile.write(str(path), x.astype(np.float32), rate, subtype="FLOAT")
    return str(path)


def test_wav2vec2_features_are_the_encoder_layers_per_frame(wav2vec2_dir):
    """With as many frames as the convolution gives, the interpolation is the identity: the features are
    then exactly the model's own hidden states (every layer); other frame counts resample them."""
    from transformers import Wav2Vec2Model

    enc = Wav2Vec2Features(str(wav2vec2_dir))
    x = torch.randn(2, 16000)
    model = Wav2Vec2Model.from_pretrained(wav2vec2_dir).eval()
    norm = (x - x.mean(1, keepdim=True)) / torch.sqrt(x.var(1, unbiased=False, keepdim=True) + 1e-7)
    with torch.no_grad():
        ref = model(norm, output_hidden_states=True).hidden_states[1:]
    frames = ref[0].shape[1]
    feats = enc(x, frames)
    assert feats.shape == (2, frames, 2, 16) and enc.shape == (2, 16)
    assert torch.allclose(feats, torch.stack(ref, dim=2), atol=1e-5)
    assert enc(x, 25).shape == (2, 25, 2, 16)  # one vector per video frame: 1 s at 25 fps
    with pytest.raises(FileNotFoundError, match="SVI_WAV2VEC2_DIR"):
        Wav2Vec2Features(None).check()


def test_windows_are_packed_per_latent_frame_as_multitalk():
    F = 9  # 3 latent frames
    feats = (torch.arange(F + 4, dtype=torch.float32) - 2).view(1, F + 4, 1, 1)  # value = frame index
    windows = audio_windows(feats)
    assert windows.shape == (1, F, 5, 1, 1) and windows[0, 4, :, 0, 0].tolist() == [2, 3, 4, 5, 6]
    first, later = pack_windows(windows)
    assert first[0, 0, :, 0, 0].tolist() == [-2, -1, 0, 1, 2]
    assert later.shape == (1, 2, 8, 1, 1)
    assert later[0, 0, :, 0, 0].tolist() == [-1, 0, 1, 2, 3, 4, 5, 6]  # frames 1..4
    assert later[0, 1, :, 0, 0].tolist() == [3, 4, 5, 6, 7, 8, 9, 10]  # frames 5..8


def _attached(tiny_stack, **kw):
    stack = copy.deepcopy(tiny_stack)
    talk = TalkCondition(**{**SMALL, **kw})
    talk.attach(stack.transformer)
    return stack, talk


def _inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(1, 16, 2, 4, 4, generator=g), torch.randn(1, 20, 2, 4, 4, generator=g),
            torch.randn(1, 512, 32, generator=g), torch.randn(1, 257, 24, generator=g), torch.tensor([500.0]))


def test_zero_adapters_leave_the_dit_unchanged_and_a_multitalk_file_loads_by_name(tiny_stack, tmp_path):
    from safetensors.torch import save_file

    x, y, text, image, t = _inputs()
    before = tiny_stack.velocity(x, y, t, text, image)
    stack, talk = _attached(tiny_stack)
    audio = {"audio": torch.randn(1, 9, 2, 16)}  # 5 frames + 4 of context
    with talk.forward_context(audio):
        assert torch.equal(stack.velocity(x, y, t, text, image), before)
    names = {k for k in stack.transformer.state_dict() if "audio" in k or "norm_x" in k}
    assert {"audio_proj.proj1.weight", "audio_proj.proj1_vf.weight", "audio_proj.norm.weight",
            "blocks.1.audio_cross_attn.kv_linear.weight", "blocks.0.norm_x.bias"} <= names  # MultiTalk's names
    g = torch.Generator().manual_seed(1)
    multitalk = {f"model.{k}": torch.randn(v.shape, generator=g) * 0.1 for k, v in stack.transformer.state_dict().items()
                 if k in names}
    save_file(multitalk, str(tmp_path / "multitalk.safetensors"))
    stack2, talk2 = _attached(tiny_stack, adapter_path=str(tmp_path / "multitalk.safetensors"))
    assert torch.equal(stack2.transformer.blocks[1].audio_cross_attn.proj.weight,
                       multitalk["model.blocks.1.audio_cross_attn.proj.weight"])
    with talk2.forward_context(audio):
        assert not torch.allclose(stack2.velocity(x, y, t, text, image), before)
    assert not any(p.requires_grad for p in stack2.transformer.audio_proj.parameters())  # frozen, as officially
    with pytest.raises(ValueError, match="do not fit this backbone"):
        talk2.load_adapter_tensors({"audio_proj.proj1.weight": torch.zeros(3, 3)})


def test_gradients_reach_trainable_adapters_and_lora_with_checkpointing(tmp_path):
    """A checkpointed block recomputes its forward in the backward pass, outside the forward context: the
    audio must be added again there, or the gradients would differ."""
    from svi.train import build

    grads = []
    for ckpt in (False, True):
        cfg = compose_config("train", ["experiment=svi_shot", "debug=tiny", "condition=talk", *SMALL_ARGS,
                                       "condition.trainable=true", "condition.audio_drop_prob=0", "lora.rank=4",
                                       "lora.alpha=4", "callbacks.rollout.enabled=false", "injection.enabled=false",
                                       f"model.gradient_checkpointing={ckpt}", f"paths.output_dir={tmp_path / str(ckpt)}"])
        model, data, _ = build(cfg)
        for block in model.stack.transformer.blocks:  # non-zero output projections, so every adapter gets a gradient
            block.audio_cross_attn.proj.weight.data.normal_(0, 0.1, generator=torch.Generator().manual_seed(0))
        data.setup("fit")
        batch = torch.utils.data.default_collate([data.dataset[0]])
        assert batch["extras"]["audio"].shape == (1, 21, 2, 16)  # 17 frames + 4
        model.generator.manual_seed(0)
        model.training_step(batch, 0)["loss"].backward()
        adapters = torch.cat([p.grad.flatten() for p in model.adapters.parameters()])
        lora = torch.cat([p.grad.flatten() for n, p in model.named_parameters() if "lora_" in n])
        assert adapters.abs().sum() > 0 and lora.abs().sum() > 0
        assert model.stack.transformer.audio_proj.proj1.weight.grad.abs().sum() > 0
        grads.append((adapters, lora))
    assert torch.allclose(grads[0][0], grads[1][0], atol=1e-6) and torch.allclose(grads[0][1], grads[1][1], atol=1e-6)


def test_three_pass_guidance_equals_its_formula(tiny_stack):
    from svi.sampling import Denoiser, WindowCond

    stack, talk = _attached(tiny_stack, text_cfg=2.0, audio_cfg=5.0)
    for block in stack.transformer.blocks:
        block.audio_cross_attn.proj.weight.data.normal_(0, 0.1, generator=torch.Generator().manual_seed(0))
    x, y, text, image, _ = _inputs(1)
    negative = torch.randn(1, 512, 32, generator=torch.Generator().manual_seed(2))
    audio = torch.randn(1, 9, 2, 16, generator=torch.Generator().manual_seed(3))
    sigma = torch.tensor([0.5])
    cond = WindowCond(y=y, text=text, negative_text=negative, image=image, cfg=7.0, extras={"audio": audio})
    v = Denoiser(stack, talk)(x, sigma, cond)

    def run(txt, a):
        with talk.forward_context({"audio": a}):
            return stack.velocity(x, y, torch.tensor([500.0]), txt, image).float()

    v_cond, v_drop_text, v_uncond = run(text, audio), run(negative, audio), run(negative, torch.zeros_like(audio))
    assert torch.allclose(v, v_uncond + 2.0 * (v_cond - v_drop_text) + 5.0 * (v_drop_text - v_uncond), atol=1e-5)
    assert not torch.allclose(v_cond, v_drop_text) and not torch.allclose(v_drop_text, v_uncond)  # 3 distinct passes


class _FrameIndexFeatures:
    """A stand-in encoder whose feature for frame j is j (reads no model)."""

    sample_rate = 16000

    def __call__(self, samples, num_frames):
        return torch.arange(num_frames, dtype=torch.float32).view(1, num_frames, 1, 1).expand(samples.shape[0], -1, 2, 16)

    def check(self):
        pass


def test_each_clip_gets_exactly_its_frames_of_the_speech(tmp_path):
    wav = write_wav(tmp_path / "s.wav", 1.0)  # 25 frames at 25 fps
    talk = TalkCondition(audio_encoder=_FrameIndexFeatures(), loudness_lufs=None, **SMALL)
    inputs, F, K = {"audio": wav}, 9, 1
    clips = talk.clips_from_inputs(inputs, F, 25.0)
    assert clips == 1 + -(-(25 - 9) // 8)  # 3: enough to cover every audio frame
    for i in range(clips):
        feats = talk.clip_extras(None, [], i, inputs, ClipGeometry(F, 32, 32, 25.0))["audio"][0, :, 0, 0]
        first = i * (F - K)
        want = [min(max(j, 0), 24) if j < 25 else 0 for j in range(first - 2, first + F + 2)]  # start clamped, silence after
        assert feats.tolist() == want
    with pytest.raises(ValueError, match="shorter than one clip"):
        talk.clips_from_inputs(inputs, 41, 25.0)


def test_a_training_clip_reads_its_own_span_of_the_speech(tmp_path):
    wav = write_wav(tmp_path / "ramp.wav", 4.0, kind="ramp")  # value = time in seconds
    talk = TalkCondition(loudness_lufs=None, **SMALL)
    extras = talk.read_row({"audio": "ramp.wav"}, str(tmp_path), "metadata.csv, row 1")
    span = ClipSpan(tuple(range(20, 29)), 25.0, (0, 0, 32, 32), (32, 32), 32, 32)  # frames 20..28 at 25 fps
    samples = talk.load_extras(extras, span)["audio"].numpy()
    assert len(samples) == (9 + 4) * 640  # the clip's frames and 2 of context at each end, at 16 kHz / 25 fps
    assert abs(samples[0] - 18 / 25) < 1e-3 and abs(samples[-1] - (31 / 25 - 1 / 16000)) < 1e-3
    strided = ClipSpan(tuple(range(20, 38, 2)), 25.0, (0, 0, 32, 32), (32, 32), 32, 32)  # stride 2: time-stretched
    stretched = talk.load_extras(extras, strided)["audio"].numpy()
    start, stop = 20 / 25 - 2 * 17 / 225, 37 / 25 + 2 * 17 / 225  # 2 clip frames (2 x 17/9 source frames) of context
    assert len(stretched) == (9 + 4) * 640 and abs(stretched[len(stretched) // 2] - (start + stop) / 2) < 5e-3


def test_bad_speech_fails_with_the_file_named(tmp_path, wav2vec2_dir):
    talk = TalkCondition(audio_encoder=Wav2Vec2Features(str(wav2vec2_dir)), **SMALL)
    with pytest.raises(AudioReadError, match="gone.wav does not exist"):
        talk.check_schedule([], {"audio": str(tmp_path / "gone.wav")})
    (tmp_path / "noise.wav").write_bytes(b"RIFF not really a wave file")
    with pytest.raises(AudioReadError, match="noise.wav cannot be read"):
        talk.check_schedule([], {"audio": str(tmp_path / "noise.wav")})
    empty = write_wav(tmp_path / "empty.wav", 0.0)
    with pytest.raises(AudioReadError, match="empty.wav is empty"):
        talk.check_schedule([], {"audio": empty})
    with pytest.raises(ValueError, match="inputs.audio=speech.wav"):
        talk.check_schedule([], {})
    no_model = TalkCondition(audio_encoder=Wav2Vec2Features(str(tmp_path / "nowhere")), **SMALL)
    with pytest.raises(FileNotFoundError, match="nowhere .* has no config.json"):
        no_model.check_schedule([], {"audio": write_wav(tmp_path / "ok.wav", 1.0)})
    with pytest.raises(AudioReadError, match="row 2: audio file .*missing.flac does not exist"):
        talk.read_row({"audio": "missing.flac"}, str(tmp_path), "metadata.csv, row 2")


def test_speech_in_other_formats_and_rates_is_read_mono_at_16k(tmp_path):
    import soundfile

    t = np.arange(44100) / 44100
    stereo = np.stack([np.sin(2 * np.pi * 300 * t), np.zeros_like(t)], axis=1).astype(np.float32)
    soundfile.write(str(tmp_path / "s.flac"), stereo, 44100)
    x = read_audio(tmp_path / "s.flac")
    assert x.shape == (16000,) and abs(np.abs(x).max() - 0.5) < 0.05  # channels averaged, resampled
    from svi.sampling.media import mux_audio, write_mp4  # a video with an audio track is speech too

    write_mp4(tmp_path / "v.mp4", np.zeros((25, 16, 16, 3), np.uint8), fps=25)
    mux_audio(tmp_path / "v.mp4", tmp_path / "s.flac")
    assert abs(len(read_audio(tmp_path / "v.mp4")) / 16000 - 1.0) < 0.1


@pytest.mark.slow
def test_talk_trains_from_videos_and_a_cache_and_generates_a_video_with_its_speech(tmp_path, wav2vec2_dir):
    from svi.generate import generate
    from svi.prepare import prepare
    from svi.sampling.media import read_mp4
    from svi.toy.world import write_dataset
    from svi.train import train
    from tests.sampling.conftest import compose_generate, write_image

    root = tmp_path / "data"
    summary = write_dataset(root, num_videos=2, num_frames=25, height=32, width=32, fps=25, progress=False)
    rows = []
    for i, row in enumerate(csv.DictReader(open(summary["csv"]))):
        write_wav(root / f"a{i}.wav", 1.0)
        rows.append((f"toyworld/{row['Filename']}", row["Video Description"], f"a{i}.wav"))
    with open(root / "metadata.csv", "w", newline="") as f:
        csv.writer(f).writerows([("path", "caption", "audio"), *rows])
    encoder = [f"condition.audio_encoder.path={wav2vec2_dir}", *SMALL_ARGS, "condition.trainable=true"]
    geometry = ["data.num_frames=9", "data.height=32", "data.width=32", "data.max_stride=1"]
    common = ["experiment=svi_shot", "debug=tiny", "condition=talk", *encoder, "lora.rank=4", "lora.alpha=4",
              "callbacks.rollout.enabled=false", "+trainer.enable_progress_bar=false", "trainer.max_steps=2"]
    run = tmp_path / "run"
    train(compose_config("train", [*common, "data=folders", f"data.root={root}", *geometry, f"paths.output_dir={run}"]))

    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from safetensors.torch import load_file

    from svi.paths import CONF_DIR

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        prep = compose("prepare", ["backbone=tiny", "condition=talk", *encoder, f"data.root={root}", *geometry,
                                   f"out={tmp_path / 'cache'}", "clips_per_video=1", "backbone_name=tiny",
                                   "progress=false"])
    prepare(prep)
    shard = load_file(str(next((tmp_path / "cache").glob("shard_*.safetensors"))))
    assert shard["extra.audio"].shape == (2, 13, 2, 16)  # the features are cached, not the waveform
    train(compose_config("train", [*common, "data=cache", f"data.root={tmp_path / 'cache'}", *geometry[:3],
                                   "data.backbone_name=tiny", f"paths.output_dir={tmp_path / 'c'}"]))

    speech = write_wav(tmp_path / "speech.wav", 0.9)  # 22 frames at 25 fps: 3 clips of 9 frames
    prompts = tmp_path / "p.txt"
    prompts.write_text("a person speaks\n")
    out = tmp_path / "gen"
    result = generate(compose_generate(["backbone=tiny", "condition=talk", *encoder, "num_frames=9", "height=32",
                                        "width=32", "flow.num_inference_steps=2", "progress=false",
                                        f"image={write_image(tmp_path / 'i.png')}", f"prompts={prompts}",
                                        f"inputs.audio={speech}", f"lora.path={run / 'adapter'}", f"out={out}"]))
    assert result["clips_total"] == 3
    frames = read_mp4(out / "video.mp4")
    assert len(frames) == 3 * 8 + 1
    audio = read_audio(out / "video.mp4")  # the muxed track, decoded
    assert abs(len(audio) / 16000 - len(frames) / 25) < 0.1  # as long as the video (padded with silence)
    assert json.loads((out / "state" / "config.json").read_text())["config"]["fps"] == 25.0
