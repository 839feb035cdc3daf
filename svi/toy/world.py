"""A procedural, download-free toy world of bouncing sprites.

Why it exists: long-video drift is hard to measure on real footage because nobody knows what
frame 1000 *should* look like. Here every frame is a closed-form function of its index, so the
world is its own oracle: ``render(world, k, n)`` is the exact continuation of any sequence that
ended at frame ``k - 1``, at any resolution, and ``write_dataset`` emits it in the official SVI
layout (``<category>/<category>.csv`` + mp4s) so the real data pipeline can train on it.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

SPRITE_COLOURS = {
    "red": (225, 45, 45), "green": (60, 200, 70), "blue": (50, 90, 235), "yellow": (245, 220, 50),
    "magenta": (220, 60, 210), "cyan": (60, 215, 225), "orange": (245, 140, 30), "white": (245, 245, 245),
}
# Darker, muted tones so sprites always stand out and background names never collide with sprite names.
BACKGROUND_COLOURS = {
    "navy": (25, 35, 90), "gray": (105, 105, 110), "brown": (100, 65, 35), "olive": (95, 100, 35),
    "teal": (20, 100, 100), "purple": (75, 35, 100), "maroon": (100, 25, 40), "slate": (55, 70, 85),
}
SHAPES = ("disc", "square")
PATTERNS = ("stripes", "checker", "gradient")
CSV_COLUMNS = ("Video Title", "Video Description", "Video URL", "Download URL", "Filename")
_CHUNK = 32  # frames rendered per call while encoding, so long/large videos never sit in memory whole


@dataclass(frozen=True)
class Sprite:
    """One sprite; positions/velocities live in a unit box so any resolution can be rendered."""

    shape: str
    colour: str
    size: float  # half-extent as a fraction of the shorter frame side
    x0: float  # unbounded start position in [0, 1] (0 = touching the left wall)
    y0: float
    vx: float  # unit-box lengths per frame
    vy: float


@dataclass(frozen=True)
class Background:
    """A two-colour texture, described in units of the shorter frame side."""

    pattern: str
    colours: tuple[str, str]
    period: float
    angle: float  # radians
    phase: float  # fraction of a period


@dataclass(frozen=True)
class Voice:
    """A sound whose loudness drives the top sprite's size (the toy world's talk signal).

    Loudness envelope a(t) = 0.5 + 0.25 sin(2 pi t / p1 + phi1) + 0.25 sin(2 pi t / p2 + phi2) in [0, 1] (t in
    frames); the sound is a `carrier` Hz tone of amplitude 0.5 a(t). Frame t shows the top sprite at half-extent
    size x (1 + depth (2 a(t + 0.5) - 1)): the loudness in the middle of the frame's own stretch of sound.
    """

    periods: tuple[float, float]
    phases: tuple[float, float]
    depth: float = 0.35
    carrier: float = 220.0

    def envelope(self, t) -> np.ndarray:
        t = np.asarray(t, dtype=np.float64)
        (p1, p2), (f1, f2) = self.periods, self.phases
        return 0.5 + 0.25 * np.sin(2 * math.pi * t / p1 + f1) + 0.25 * np.sin(2 * math.pi * t / p2 + f2)


@dataclass(frozen=True)
class Dance:
    """Choreographed sprite paths replacing the bounce (the toy world's dance signal): per sprite and axis
    position c + a sin(2 pi t / p + phi) in the unit box (|a| <= min(c, 1 - c), so it never leaves it)."""

    centres: tuple[tuple[float, float], ...]
    amplitudes: tuple[tuple[float, float], ...]
    periods: tuple[tuple[float, float], ...]
    phases: tuple[tuple[float, float], ...]

    def positions(self, t) -> np.ndarray:
        """(len(t), n_sprites, 2) unit-box (x, y)."""
        t = np.asarray(t, dtype=np.float64).reshape(-1, 1, 1)
        c, a = np.array(self.centres), np.array(self.amplitudes)
        p, f = np.array(self.periods), np.array(self.phases)
        return c + a * np.sin(2 * math.pi * t / p + f)


@dataclass(frozen=True)
class Scene:
    """A whole single-shot world: background, sprites, an optional slow brightness drift, and optionally a
    voice (the top sprite's size follows a sound) or a dance (the sprites follow a choreography)."""

    seed: int
    background: Background
    sprites: tuple[Sprite, ...]
    drift: float = 0.0  # amplitude of the background brightness oscillation (0 = static)
    drift_period: float = 300.0  # frames
    drift_phase: float = 0.0
    voice: Voice | None = None
    dance: Dance | None = None

    def to_dict(self) -> dict:
        d = asdict(self)
        return {k: v for k, v in d.items() if not (k in ("voice", "dance") and v is None)}

    @classmethod
    def from_dict(cls, d: dict) -> "Scene":
        bg = dict(d["background"], colours=tuple(d["background"]["colours"]))
        sprites = tuple(Sprite(**s) for s in d["sprites"])
        rest = {k: d[k] for k in ("drift", "drift_period", "drift_phase") if k in d}
        if d.get("voice"):
            rest["voice"] = Voice(**{k: tuple(v) if isinstance(v, list) else v for k, v in d["voice"].items()})
        if d.get("dance"):
            rest["dance"] = Dance(**{k: tuple(tuple(x) for x in v) for k, v in d["dance"].items()})
        return cls(seed=int(d["seed"]), background=Background(**bg), sprites=sprites, **rest)


def derive_seed(seed: int, *keys: int) -> int:
    """A well-mixed child seed, so video i / shot k get unrelated scenes rather than seed+i."""
    return int(np.random.SeedSequence([int(seed), *map(int, keys)]).generate_state(1)[0])


def _check_seed(seed) -> int:
    if isinstance(seed, bool) or int(seed) != seed or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    return int(seed)


SPRITE_SIZE = (0.07, 0.14)  # default range of a sprite's half-extent (fraction of the shorter side)
SPRITE_SPEED = (0.008, 0.03)  # default range of a sprite's speed along each axis (unit-box lengths per frame)


def _check_range(value, name: str, what: str, ok, rule: str) -> tuple[float, float]:
    """A [low, high] pair of floats for option `name` (`what` it holds), or a ValueError saying the `rule`."""
    try:
        lo, hi = (float(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a pair [low, high] of {what}, got {value!r}") from None
    if not ok(lo, hi):
        raise ValueError(f"{name} must satisfy {rule}, got {[lo, hi]}")
    return lo, hi


def _check_sprite_size(sprite_size) -> tuple[float, float]:
    return _check_range(sprite_size, "sprite_size", "half-extents (fractions of the shorter frame side)",
                        lambda lo, hi: 0.0 < lo <= hi < 0.5, "0 < low <= high < 0.5 (a sprite must fit in the frame)")


def _check_speed(speed) -> tuple[float, float]:
    return _check_range(speed, "speed", "per-axis sprite speeds (unit-box lengths per frame)",
                        lambda lo, hi: 0.0 <= lo <= hi <= 0.25, "0 <= low <= high <= 0.25 ([0, 0] = sprites that stay put)")


def make_scene(seed: int, max_sprites: int = 4, min_sprites: int = 1, drift: float = 0.0, voice: bool = False,
               dance: bool = False, sprite_size=SPRITE_SIZE, speed=SPRITE_SPEED) -> Scene:
    """Sample a scene deterministically from ``seed`` (same seed -> same scene, always). `voice` / `dance` add
    the talk / dance signal, drawn from their own child seeds (the rest of the scene is the same without).
    `sprite_size` is the range each sprite's half-extent is drawn from (the same draws for any range, so a
    scene with larger sprites is the same scene otherwise). `speed` is the range of each sprite's speed along
    each axis (the same draws for any range; [0, 0] = sprites that stay where they start)."""
    seed = _check_seed(seed)
    size_lo, size_hi = _check_sprite_size(sprite_size)
    speed_lo, speed_hi = _check_speed(speed)
    if not 1 <= min_sprites <= max_sprites <= len(SPRITE_COLOURS):
        raise ValueError(f"need 1 <= min_sprites <= max_sprites <= {len(SPRITE_COLOURS)}, "
                         f"got min_sprites={min_sprites}, max_sprites={max_sprites}")
    if not 0.0 <= drift < 1.0:
        raise ValueError(f"drift must be in [0, 1), got {drift}")
    rng = np.random.default_rng(seed)
    pattern = PATTERNS[rng.integers(len(PATTERNS))]
    bg_names = rng.choice(list(BACKGROUND_COLOURS), size=2, replace=False)
    background = Background(pattern, (str(bg_names[0]), str(bg_names[1])),
                            period=float(rng.uniform(0.15, 0.4)),
                            angle=float(rng.uniform(0, math.pi)), phase=float(rng.uniform(0, 1)))
    n = int(rng.integers(min_sprites, max_sprites + 1))
    colours = rng.choice(list(SPRITE_COLOURS), size=n, replace=False)
    sprites = []
    for colour in colours:
        speed = speed_lo + (speed_hi - speed_lo) * rng.uniform(0, 1, size=2)
        speed = speed * rng.choice([-1.0, 1.0], size=2)
        sprites.append(Sprite(shape=SHAPES[rng.integers(len(SHAPES))], colour=str(colour),
                              size=float(rng.uniform(size_lo, size_hi)), x0=float(rng.uniform(0, 1)),
                              y0=float(rng.uniform(0, 1)), vx=float(speed[0]), vy=float(speed[1])))
    return Scene(seed, background, tuple(sprites), drift=float(drift),
                 drift_period=float(rng.uniform(200, 400)), drift_phase=float(rng.uniform(0, 2 * math.pi)),
                 voice=_make_voice(derive_seed(seed, 101)) if voice else None,
                 dance=_make_dance(derive_seed(seed, 102), n) if dance else None)


def _make_voice(seed: int) -> Voice:
    rng = np.random.default_rng(seed)
    return Voice(periods=(float(rng.uniform(6, 14)), float(rng.uniform(16, 40))),
                 phases=(float(rng.uniform(0, 2 * math.pi)), float(rng.uniform(0, 2 * math.pi))))


def _make_dance(seed: int, num_sprites: int) -> Dance:
    rng = np.random.default_rng(seed)
    c = rng.uniform(0.25, 0.75, size=(num_sprites, 2))
    a = np.minimum(c, 1 - c) * rng.uniform(0.6, 1.0, size=(num_sprites, 2))
    p = rng.uniform(24, 64, size=(num_sprites, 2))
    f = rng.uniform(0, 2 * math.pi, size=(num_sprites, 2))
    return Dance(*(tuple(tuple(float(v) for v in row) for row in arr) for arr in (c, a, p, f)))


@dataclass
class FilmScript:
    """Film-style world: a new scene (seeded from ``seed`` and the shot index) every N frames."""

    seed: int
    scene_change_every: int
    max_sprites: int = 4
    min_sprites: int = 1
    drift: float = 0.0
    sprite_size: tuple[float, float] = SPRITE_SIZE
    speed: tuple[float, float] = SPRITE_SPEED
    _cache: dict = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self):
        self.seed = _check_seed(self.seed)
        if int(self.scene_change_every) != self.scene_change_every or self.scene_change_every < 1:
            raise ValueError(f"scene_change_every must be a positive integer (frames per shot), "
                             f"got {self.scene_change_every!r}")
        self.scene_change_every = int(self.scene_change_every)
        self.sprite_size = _check_sprite_size(self.sprite_size)
        self.speed = _check_speed(self.speed)
        make_scene(0, self.max_sprites, self.min_sprites, self.drift)  # validate options eagerly

    def shot_index(self, frame: int) -> int:
        return int(frame) // self.scene_change_every

    def shot(self, index: int) -> Scene:
        if index not in self._cache:
            seed = derive_seed(self.seed, index, 1)
            self._cache[index] = make_scene(seed, self.max_sprites, self.min_sprites, self.drift,
                                            sprite_size=self.sprite_size, speed=self.speed)
        return self._cache[index]

    def to_dict(self) -> dict:
        return {"seed": self.seed, "scene_change_every": self.scene_change_every,
                "max_sprites": self.max_sprites, "min_sprites": self.min_sprites, "drift": self.drift,
                "sprite_size": list(self.sprite_size), "speed": list(self.speed)}


def make_world(seed: int, scene_change_every: int | None = None, **options) -> Scene | FilmScript:
    """A single scene, or a film script when ``scene_change_every`` is set."""
    if scene_change_every is None:
        return make_scene(seed, **options)
    signals = [k for k in ("voice", "dance") if options.pop(k, False)]
    if signals:
        raise ValueError(f"a film script (scene_change_every={scene_change_every}) has no {' or '.join(signals)}: "
                         f"the talk and dance worlds are single shots; leave scene_change_every null")
    return FilmScript(seed, scene_change_every, **options)


def _triangle(p: np.ndarray) -> np.ndarray:
    """Fold an unbounded coordinate into [0, 1]: this *is* elastic bouncing between two walls."""
    p = np.mod(p, 2.0)
    return np.where(p <= 1.0, p, 2.0 - p)


def sprite_positions(scene: Scene, frames) -> np.ndarray:
    """Unit-box sprite positions, shape (len(frames), num_sprites, 2) as (x, y) in [0, 1]: bouncing, or the
    scene's choreography."""
    if scene.dance is not None:
        return scene.dance.positions(frames)
    t = np.asarray(frames, dtype=np.float64).reshape(-1, 1)
    x = _triangle(np.array([s.x0 for s in scene.sprites]) + t * np.array([s.vx for s in scene.sprites]))
    y = _triangle(np.array([s.y0 for s in scene.sprites]) + t * np.array([s.vy for s in scene.sprites]))
    return np.stack([x, y], axis=-1)


def sprite_sizes(scene: Scene, frames) -> np.ndarray:
    """Half-extents (fractions of the shorter side), shape (len(frames), num_sprites): the sprites' own sizes,
    the top (last) one scaled by the voice's loudness in a voiced scene."""
    t = np.asarray(frames, dtype=np.float64).reshape(-1)
    sizes = np.tile(np.array([s.size for s in scene.sprites]), (len(t), 1))
    if scene.voice is not None:
        sizes[:, -1] *= 1.0 + scene.voice.depth * (2.0 * scene.voice.envelope(t + 0.5) - 1.0)
    return sizes


def max_sizes(scene: Scene) -> np.ndarray:
    """The largest half-extent each sprite ever has (the voiced one at full loudness)."""
    sizes = np.array([s.size for s in scene.sprites])
    if scene.voice is not None:
        sizes[-1] *= 1.0 + scene.voice.depth
    return sizes


def sprite_centres(scene: Scene, frames, height: int, width: int) -> np.ndarray:
    """Pixel centres (x, y): the unit box is mapped so that every sprite stays fully in frame."""
    pos = sprite_positions(scene, frames)
    r = max_sizes(scene) * min(height, width)
    return np.stack([r + pos[..., 0] * (width - 2 * r), r + pos[..., 1] * (height - 2 * r)], axis=-1)


def sprite_gaps(centres: np.ndarray, radii: np.ndarray) -> np.ndarray:
    """Edge-to-edge distances (px) between sprites, each as a disc: centres (..., n, 2), radii (n,) ->
    (..., n, n), negative where two overlap; the diagonal (a sprite and itself) is +inf."""
    centres, radii = np.asarray(centres, dtype=np.float64), np.asarray(radii, dtype=np.float64)
    gap = np.linalg.norm(centres[..., :, None, :] - centres[..., None, :, :], axis=-1) - (radii[:, None] + radii[None])
    gap[..., np.arange(len(radii)), np.arange(len(radii))] = np.inf
    return gap


def _signed_stripe(s: np.ndarray, period: float) -> np.ndarray:
    """Signed distance to the nearest edge of a square wave (positive in the first half-period)."""
    return period * (0.25 - np.abs(np.mod(s / period + 0.25, 1.0) - 0.5))


def _background(bg: Background, height: int, width: int) -> np.ndarray:
    """Float RGB background; edges are blended over ~1 px so textures do not alias."""
    unit = min(height, width)
    yy, xx = np.meshgrid((np.arange(height) + 0.5) / unit, (np.arange(width) + 0.5) / unit, indexing="ij")
    along = xx * math.cos(bg.angle) + yy * math.sin(bg.angle)
    if bg.pattern == "stripes":
        w = np.clip(0.5 + unit * _signed_stripe(along + bg.phase * bg.period, bg.period), 0, 1)
    elif bg.pattern == "checker":
        a = _signed_stripe(xx + bg.phase * bg.period, bg.period)
        b = _signed_stripe(yy + bg.phase * bg.period, bg.period)
        w = np.clip(0.5 + unit * np.sign(a * b) * np.minimum(np.abs(a), np.abs(b)), 0, 1)
    elif bg.pattern == "gradient":
        span = max(float(along.max() - along.min()), 1e-9)
        w = 1.0 - (along - along.min()) / span
    else:
        raise ValueError(f"unknown background pattern {bg.pattern!r}; expected one of {PATTERNS}")
    ca, cb = (np.array(BACKGROUND_COLOURS[c], dtype=np.float64) for c in bg.colours)
    return w[..., None] * ca + (1.0 - w[..., None]) * cb


def _draw_sprites(frame: np.ndarray, scene: Scene, t: int, centres: np.ndarray | None = None) -> None:
    """Composite sprites in list order (later ones on top), with ~1 px anti-aliased edges.

    `centres` (n_sprites, 2) pixel (x, y) overrides the scene's trajectory (a re-posed world frame)."""
    height, width = frame.shape[:2]
    if centres is None:
        centres = sprite_centres(scene, [t], height, width)[0]
    for sprite, size, (cx, cy) in zip(scene.sprites, sprite_sizes(scene, [t])[0], centres):
        r = size * min(height, width)
        x0, x1 = max(int(cx - r - 1), 0), min(int(cx + r + 2), width)
        y0, y1 = max(int(cy - r - 1), 0), min(int(cy + r + 2), height)
        dy, dx = np.meshgrid(np.arange(y0, y1) + 0.5 - cy, np.arange(x0, x1) + 0.5 - cx, indexing="ij")
        if sprite.shape == "disc":
            dist = np.sqrt(dx * dx + dy * dy)
        else:
            dist = np.maximum(np.abs(dx), np.abs(dy))
        alpha = np.clip(r - dist + 0.5, 0.0, 1.0)[..., None]
        colour = np.array(SPRITE_COLOURS[sprite.colour], dtype=np.float64)
        frame[y0:y1, x0:x1] = alpha * colour + (1.0 - alpha) * frame[y0:y1, x0:x1]


def _brightness(scene: Scene, t: int) -> float:
    if scene.drift == 0.0:
        return 1.0
    return 1.0 + scene.drift * math.sin(2 * math.pi * t / scene.drift_period + scene.drift_phase)


def _check_render_args(start: int, num_frames: int, height: int, width: int) -> None:
    if int(start) != start or start < 0:
        raise ValueError(f"start must be a non-negative integer frame index, got {start!r}")
    if int(num_frames) != num_frames or num_frames < 1:
        raise ValueError(f"num_frames must be an integer >= 1, got {num_frames!r}")
    if int(height) != height or int(width) != width or height < 1 or width < 1:
        raise ValueError(f"height and width must be positive integers, got {height!r}x{width!r}")


def _shot_of(world: Scene | FilmScript, t: int) -> tuple[Scene, int, int]:
    """(scene, local frame index, shot index) for global frame ``t``."""
    if isinstance(world, FilmScript):
        k = world.shot_index(t)
        return world.shot(k), t - k * world.scene_change_every, k
    return world, t, 0


def render(world: Scene | FilmScript, start: int, num_frames: int, height: int, width: int) -> np.ndarray:
    """Frames [start, start + num_frames) as uint8 (N, H, W, 3).

    Each frame depends only on its own index (closed-form bouncing), and frames are rendered one
    at a time with identical array shapes, so rendering in pieces is bit-identical to rendering
    at once: the world is the exact ground-truth continuation of any of its prefixes.
    """
    _check_render_args(start, num_frames, height, width)
    out = np.empty((num_frames, height, width, 3), dtype=np.uint8)
    backgrounds: dict[int, np.ndarray] = {}
    for i, t in enumerate(range(int(start), int(start) + int(num_frames))):
        scene, local_t, shot = _shot_of(world, t)
        if shot not in backgrounds:
            backgrounds[shot] = _background(scene.background, height, width)
        frame = backgrounds[shot] * _brightness(scene, local_t)
        _draw_sprites(frame, scene, local_t)
        out[i] = np.clip(np.rint(frame), 0, 255).astype(np.uint8)
    return out


POSE_MARKER = 1.5  # pixel radius of a sprite's marker in the pose video
SAMPLE_RATE = 16_000  # the toy sound's sample rate (Hz)


def render_pose(world: Scene | FilmScript, start: int, num_frames: int, height: int, width: int) -> np.ndarray:
    """The dance signal as a video, uint8 (N, H, W, 3): black frames with a small anti-aliased disc in each
    sprite's colour at its centre (what a skeleton render is to a person), later sprites on top."""
    _check_render_args(start, num_frames, height, width)
    out = np.zeros((num_frames, height, width, 3), dtype=np.uint8)
    yy, xx = np.meshgrid(np.arange(height) + 0.5, np.arange(width) + 0.5, indexing="ij")
    for i, t in enumerate(range(int(start), int(start) + int(num_frames))):
        scene, local_t, _ = _shot_of(world, t)
        frame = np.zeros((height, width, 3))
        for sprite, (cx, cy) in zip(scene.sprites, sprite_centres(scene, [local_t], height, width)[0]):
            alpha = np.clip(POSE_MARKER - np.sqrt((xx - cx) ** 2 + (yy - cy) ** 2) + 0.5, 0.0, 1.0)[..., None]
            frame = alpha * np.array(SPRITE_COLOURS[sprite.colour], dtype=np.float64) + (1.0 - alpha) * frame
        out[i] = np.clip(np.rint(frame), 0, 255).astype(np.uint8)
    return out


def voice_samples(world: Scene | FilmScript, start: float, stop: float, fps: float,
                  sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """The talk signal as sound: float32 samples of frames [start, stop) (fractional frames allowed, negative
    ones too: the voice is defined for all time) at `fps` video frames per second; silence without a voice."""
    n = int(round((stop - start) * sample_rate / fps))
    scene = _shot_of(world, max(int(math.floor(start)), 0))[0]
    if scene.voice is None or n <= 0:
        return np.zeros(max(n, 0), dtype=np.float32)
    seconds = start / fps + np.arange(n) / sample_rate
    env = scene.voice.envelope(seconds * fps)
    return (0.5 * env * np.sin(2 * math.pi * scene.voice.carrier * seconds)).astype(np.float32)


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _scene_caption(scene: Scene) -> str:
    things = [f"{_article(s.colour)} {s.colour} {s.shape}" for s in scene.sprites]
    subject = things[0] if len(things) == 1 else ", ".join(things[:-1]) + " and " + things[-1]
    verb = "moves" if len(things) == 1 else "move"
    a, b = scene.background.colours
    bg = {"stripes": f"a striped {a} and {b} background", "checker": f"a checkered {a} and {b} background",
          "gradient": f"{_article(a)} {a} to {b} gradient background"}[scene.background.pattern]
    if scene.dance is not None:
        verb = "dances" if len(things) == 1 else "dance"
    text = f"{subject} {verb} across {bg}"
    if scene.voice is not None:
        top = scene.sprites[-1]
        text += f", the {top.colour} {top.shape} pulsing with a sound"
    return text + ", slowly brightening and dimming" if scene.drift > 0 else text


def captions_per_shot(world: Scene | FilmScript, num_frames: int) -> list[str]:
    """One caption per shot overlapping frames [0, num_frames): the prompt stream of a film."""
    if int(num_frames) != num_frames or num_frames < 1:
        raise ValueError(f"num_frames must be an integer >= 1, got {num_frames!r}")
    if isinstance(world, FilmScript):
        return [_scene_caption(world.shot(k)) for k in range(world.shot_index(num_frames - 1) + 1)]
    return [_scene_caption(world)]


def caption_at(world: Scene | FilmScript, frame: int) -> str:
    """The caption of the shot containing ``frame`` (use a clip's first frame for per-clip prompts)."""
    return _scene_caption(_shot_of(world, int(frame))[0])


def caption(world: Scene | FilmScript, num_frames: int = 1) -> str:
    """Text prompt for a whole video; a film's shots are joined with '; then '."""
    return "; then ".join(captions_per_shot(world, num_frames))


def load_scene(row: dict) -> Scene | FilmScript:
    """Rebuild the world of one ``scenes.jsonl`` row, to render ground-truth continuations."""
    if row.get("film"):
        return FilmScript(**row["script"])
    return Scene.from_dict(row["scene"])


def read_scenes(jsonl_path: str | Path) -> list[dict]:
    """All rows of a ``scenes.jsonl`` file."""
    with open(jsonl_path) as f:
        return [json.loads(line) for line in f if line.strip()]


def _write_mp4(path: Path, world, num_frames: int, height: int, width: int, fps: int, draw=render) -> None:
    import imageio.v2 as imageio

    writer = imageio.get_writer(str(path), fps=fps, codec="libx264", quality=8, macro_block_size=1,
                                ffmpeg_log_level="error")
    try:
        for s in range(0, num_frames, _CHUNK):
            for frame in draw(world, s, min(_CHUNK, num_frames - s), height, width):
                writer.append_data(frame)
    finally:
        writer.close()


def write_dataset(out_dir, num_videos: int, num_frames: int = 81, height: int = 64, width: int = 64,
                  fps: int = 16, seed: int = 0, category: str = "toyworld", film: bool = False,
                  scene_change_every: int | None = None, max_sprites: int = 4, drift: float = 0.0,
                  voice: bool = False, dance: bool = False, progress: bool = True,
                  sprite_size=SPRITE_SIZE, speed=SPRITE_SPEED) -> dict:
    """Write ``num_videos`` toy videos in the official SVI layout plus ``scenes.jsonl``.

    Film mode cuts to a new scene every ``scene_change_every`` frames (default: a third of the
    video); setting ``scene_change_every`` alone also turns film mode on. `voice` writes each video's sound
    as ``<name>.wav`` (16 kHz, the `audio` column: condition=talk); `dance` its pose video as
    ``<name>_pose.mp4`` (the `pose` column: condition=dance).
    """
    from tqdm.auto import tqdm

    if int(num_videos) != num_videos or num_videos < 1:
        raise ValueError(f"num_videos must be an integer >= 1, got {num_videos!r}")
    _check_render_args(0, num_frames, height, width)
    if height % 2 or width % 2:
        raise ValueError(f"mp4 (yuv420p) needs even height and width, got {height}x{width}")
    if fps <= 0:
        raise ValueError(f"fps must be positive, got {fps!r}")
    if not category or any(c in str(category) for c in "/\\") or str(category) in (".", ".."):
        raise ValueError(f"category must be a plain folder name, got {category!r}")
    seed = _check_seed(seed)
    _check_sprite_size(sprite_size)
    _check_speed(speed)
    film = bool(film) or scene_change_every is not None
    if film and (voice or dance):
        raise ValueError("voice and dance worlds are single shots: set film=false and scene_change_every=null")
    if film and scene_change_every is None:
        scene_change_every = max(1, -(-num_frames // 3))
    folder = Path(out_dir) / category
    folder.mkdir(parents=True, exist_ok=True)
    csv_path, jsonl_path = folder / f"{category}.csv", folder / "scenes.jsonl"
    videos = []
    with open(csv_path, "w", newline="") as fc, open(jsonl_path, "w") as fj:
        table = csv.writer(fc)
        table.writerow(CSV_COLUMNS + ("audio",) * bool(voice) + ("pose",) * bool(dance))
        for i in tqdm(range(num_videos), desc=f"writing {category}", unit="video", disable=not progress):
            video_seed = derive_seed(seed, i)
            options = dict(max_sprites=max_sprites, drift=drift, sprite_size=tuple(sprite_size), speed=tuple(speed),
                           **({"voice": True} if voice else {}),
                           **({"dance": True} if dance else {}))
            world = make_world(video_seed, scene_change_every if film else None, **options)
            name = f"{category}_{i:05d}.mp4"
            _write_mp4(folder / name, world, num_frames, height, width, fps)
            text = caption(world, num_frames)
            signals = []
            if voice:
                import soundfile

                soundfile.write(folder / name.replace(".mp4", ".wav"), voice_samples(world, 0, num_frames, fps),
                                SAMPLE_RATE, subtype="PCM_16")
                signals.append(name.replace(".mp4", ".wav"))
            if dance:
                _write_mp4(folder / name.replace(".mp4", "_pose.mp4"), world, num_frames, height, width, fps,
                           draw=render_pose)
                signals.append(name.replace(".mp4", "_pose.mp4"))
            table.writerow([f"{category} {i:05d}", text, "", "", name, *signals])
            row = {"filename": name, "seed": video_seed, "num_frames": num_frames, "height": height,
                   "width": width, "fps": fps, "film": film, "caption": text,
                   "captions": captions_per_shot(world, num_frames)}
            if film:
                row.update(scene_change_every=scene_change_every, script=world.to_dict())
            else:
                row["scene"] = world.to_dict()
            fj.write(json.dumps(row) + "\n")
            videos.append(str(folder / name))
    return {"count": num_videos, "dir": str(folder), "csv": str(csv_path), "jsonl": str(jsonl_path),
            "videos": videos, "film": film, "scene_change_every": scene_change_every}
