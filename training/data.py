"""The procedural captioned world the demo models learn: 128×128 RGB scenes, deterministic
from a seed.

- shapes: 1–3 objects (circle, square, triangle, star, ring, diamond, cross) in 11 named
  colours, small or large, at 9 named positions, on a named background colour;
- figures: a person drawn on an OpenPose-18 skeleton from a pose prior (standing, arms
  raised, arms out, waving, walking, sitting), body and head in one named colour.

Scene parameters are sampled on the CPU with a seeded torch.Generator (so a seed gives the
same scenes on any device); pixels are rendered in batches on any device (training/render.py).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, fields

import torch

from training import pose_prior, render

IMAGE_SIZE = 128
MAX_OBJECTS = 3

COLOURS = {
    "red": (215, 40, 40), "orange": (245, 135, 20), "yellow": (245, 215, 35),
    "green": (40, 160, 60), "blue": (35, 80, 215), "purple": (130, 55, 180),
    "pink": (240, 125, 190), "brown": (125, 75, 35), "white": (245, 245, 245),
    "black": (25, 25, 25), "gray": (128, 128, 128),
}
COLOUR_NAMES = tuple(COLOURS)
PALETTE = torch.tensor(list(COLOURS.values()), dtype=torch.float32) / 255.0  # (11, 3) in [0, 1]
SHAPES = tuple(render.SHAPE_SDFS)
SIZES = ("small", "large")
RADIUS_RANGE = {0: (9.0, 12.0), 1: (16.0, 20.0)}  # px; large objects on neighbouring cells never touch
POSITION_JITTER = 3.0

# 3×3 grid of named positions: (caption phrase, column, row).
POSITIONS = (
    ("at the top left", 0, 0), ("at the top", 1, 0), ("at the top right", 2, 0),
    ("on the left", 0, 1), ("in the centre", 1, 1), ("on the right", 2, 1),
    ("at the bottom left", 0, 2), ("at the bottom", 1, 2), ("at the bottom right", 2, 2),
)
CENTRE = 4
GRID_PX = (24.0, 64.0, 104.0)
POSES = pose_prior.POSES

SHAPES_KIND, PERSON_KIND = 0, 1
OBJECT_COUNT_PROBS = (0.5, 0.3, 0.2)  # 1, 2 or 3 objects
PERSON_FRACTION = 0.2
OMIT_CENTRE_PROB = 0.5  # "a red circle on a white background" means centred
OMIT_SIZE_PROB = 0.15
OMIT_BACKGROUND_PROB = 0.1


def heldout_triples() -> torch.Tensor:
    """(colour, shape, background) combinations never drawn in training — 22 of the 847
    (2.6 %), covering every colour and background and five of the seven shapes (circles and
    rings have none) — so the evaluation can ask for
    captions the model never saw."""
    c = torch.arange(len(COLOURS))[:, None, None]
    s = torch.arange(len(SHAPES))[None, :, None]
    b = torch.arange(len(COLOURS))[None, None, :]
    return ((3 * c + 5 * s + 7 * b) % 20 == 0) & (c != b)


@dataclass
class Scenes:
    """A batch of scenes; per-object tensors are (n, MAX_OBJECTS), unused slots have present=False."""
    kind: torch.Tensor        # (n,) SHAPES_KIND or PERSON_KIND
    background: torch.Tensor  # (n,) colour index
    present: torch.Tensor     # (n, K) bool
    shape: torch.Tensor       # (n, K) index into SHAPES
    colour: torch.Tensor      # (n, K) colour index; slot 0 is the person's colour
    size: torch.Tensor        # (n, K) 0 small, 1 large
    position: torch.Tensor    # (n, K) index into POSITIONS
    centre: torch.Tensor      # (n, K, 2) px (x, y)
    radius: torch.Tensor      # (n, K) px
    pose: torch.Tensor        # (n,) index into POSES, −1 for shape scenes
    height: torch.Tensor      # (n,) figure height px (0 for shape scenes)
    keypoints: torch.Tensor   # (n, 18, 2) px, NaN for shape scenes
    captions: list

    def __len__(self) -> int:
        return len(self.kind)

    def select(self, index) -> "Scenes":
        index = torch.as_tensor(index)
        parts = {f.name: getattr(self, f.name) for f in fields(self)}
        rows = index.tolist() if index.dim() else [int(index)]
        return Scenes(**{k: ([v[i] for i in rows] if k == "captions" else v[index.reshape(-1)])
                         for k, v in parts.items()})


def sample_scenes(n: int, seed: int, person_fraction: float = PERSON_FRACTION,
                  heldout: str = "exclude") -> Scenes:
    """n random scenes from `seed`. heldout="exclude" never draws a held-out (colour, shape,
    background) triple (training); "ignore" allows them."""
    g = torch.Generator().manual_seed(seed)
    k, n_colours = MAX_OBJECTS, len(COLOURS)
    kind = (torch.rand(n, generator=g) < person_fraction).long()
    background = torch.randint(n_colours, (n,), generator=g)
    count = torch.multinomial(torch.tensor(OBJECT_COUNT_PROBS), n, replacement=True, generator=g) + 1
    present = (torch.arange(k)[None] < count[:, None]) & (kind[:, None] == SHAPES_KIND)
    shape = torch.randint(len(SHAPES), (n, k), generator=g)
    # Objects never take the background's colour: offset 1..10 around the colour wheel.
    colour = (background[:, None] + 1 + torch.randint(n_colours - 1, (n, k), generator=g)) % n_colours
    if heldout == "exclude":
        table = heldout_triples()
        for _ in range(50):
            bad = table[colour, shape, background[:, None].expand(n, k)] & present
            if not bad.any():
                break
            redraw = (background[:, None] + 1 + torch.randint(n_colours - 1, (n, k), generator=g)) % n_colours
            colour = torch.where(bad, redraw, colour)
    size = torch.randint(2, (n, k), generator=g)
    position = torch.rand(n, 9, generator=g).argsort(dim=1)[:, :k]  # distinct cells
    grid = torch.tensor(GRID_PX)
    cols = torch.tensor([p[1] for p in POSITIONS])[position]
    rows = torch.tensor([p[2] for p in POSITIONS])[position]
    jitter = (torch.rand(n, k, 2, generator=g) * 2 - 1) * POSITION_JITTER
    centre = torch.stack([grid[cols], grid[rows]], dim=-1) + jitter
    u = torch.rand(n, k, generator=g)
    radius = torch.where(size == 1, 16.0 + 4.0 * u, 9.0 + 3.0 * u)

    is_person = kind == PERSON_KIND
    pose = torch.where(is_person, torch.randint(len(POSES), (n,), generator=g), -1)
    height = torch.where(is_person, 76.0 + 24.0 * torch.rand(n, generator=g), 0.0)
    fig_centre = torch.stack([64 + (torch.rand(n, generator=g) * 2 - 1) * 8,
                              64 + (torch.rand(n, generator=g) * 2 - 1) * 4], dim=1)
    keypoints = torch.full((n, 18, 2), float("nan"))
    if is_person.any():
        idx = is_person.nonzero().squeeze(1)
        keypoints[idx] = pose_prior.skeletons(pose[idx], height[idx], fig_centre[idx], g)

    omit = torch.rand(n, 3, generator=g)
    scenes = Scenes(kind, background, present, shape, colour, size, position, centre, radius,
                    pose, height, keypoints, captions=[])
    scenes.captions = _captions(scenes, omit_centre=omit[:, 0] < OMIT_CENTRE_PROB,
                                omit_size=omit[:, 1] < OMIT_SIZE_PROB,
                                omit_background=omit[:, 2] < OMIT_BACKGROUND_PROB)
    return scenes


def scene_from_objects(objects: list[tuple[str, str, str, str]], background: str,
                       caption: str | None = None) -> Scenes:
    """One scene from explicit (size, colour, shape, position phrase) objects, exactly centred
    on their cells, e.g. [("large", "red", "circle", "in the centre")]."""
    k = MAX_OBJECTS
    phrases = [p[0] for p in POSITIONS]
    sc = sample_scenes(1, seed=0, person_fraction=0.0, heldout="ignore")
    sc.background[0] = COLOUR_NAMES.index(background)
    sc.present[0] = torch.arange(k) < len(objects)
    for i, (size, colour, shape, where) in enumerate(objects):
        pos = phrases.index(where)
        sc.size[0, i], sc.colour[0, i], sc.shape[0, i] = SIZES.index(size), COLOUR_NAMES.index(colour), SHAPES.index(shape)
        sc.position[0, i] = pos
        sc.centre[0, i] = torch.tensor([GRID_PX[POSITIONS[pos][1]], GRID_PX[POSITIONS[pos][2]]])
        sc.radius[0, i] = sum(RADIUS_RANGE[SIZES.index(size)]) / 2
    said = _captions(sc, omit_centre=torch.ones(1, dtype=torch.bool), omit_size=torch.zeros(1, dtype=torch.bool),
                     omit_background=torch.zeros(1, dtype=torch.bool))[0]
    sc.captions = [caption if caption is not None else said]
    return sc


def person_scene(colour: str, pose: str, background: str, seed: int = 0, height: float = 90.0) -> Scenes:
    """One centred figure in a named pose (its limbs jittered by the pose prior from `seed`)."""
    sc = sample_scenes(1, seed=0, person_fraction=1.0, heldout="ignore")
    sc.background[0], sc.colour[0, 0] = COLOUR_NAMES.index(background), COLOUR_NAMES.index(colour)
    sc.pose[0], sc.height[0] = POSES.index(pose), height
    g = torch.Generator().manual_seed(seed)
    sc.keypoints = pose_prior.skeletons(sc.pose, sc.height, torch.tensor([[64.0, 64.0]]), g)
    sc.captions = [f"{article(colour)} {colour} person {pose} on {article(background)} {background} background"]
    return sc


def article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _captions(sc: Scenes, omit_centre, omit_size, omit_background) -> list[str]:
    out = []
    for i in range(len(sc)):
        bg = COLOUR_NAMES[int(sc.background[i])]
        if int(sc.kind[i]) == PERSON_KIND:
            colour = COLOUR_NAMES[int(sc.colour[i, 0])]
            subject = f"{article(colour)} {colour} person {POSES[int(sc.pose[i])]}"
            out.append(subject if omit_background[i] else f"{subject} on {article(bg)} {bg} background")
            continue
        count = int(sc.present[i].sum())
        phrases, said_position = [], False
        for j in range(count):
            words = [SIZES[int(sc.size[i, j])]] if not omit_size[i] else []
            words += [COLOUR_NAMES[int(sc.colour[i, j])], SHAPES[int(sc.shape[i, j])]]
            words.insert(0, article(words[0]))
            pos = int(sc.position[i, j])
            if not (count == 1 and pos == CENTRE and omit_centre[i]):
                words.append(POSITIONS[pos][0])
                said_position = True
            phrases.append(" ".join(words))
        subject = phrases[0] if count == 1 else ", ".join(phrases[:-1]) + " and " + phrases[-1]
        if omit_background[i]:
            out.append(subject)
        else:
            out.append(f"{subject}{',' if said_position else ''} on {article(bg)} {bg} background")
    return out


def render_scenes(sc: Scenes, device="cpu", chunk: int = 1024) -> torch.Tensor:
    """RGB images (n, 3, 128, 128), float32 in [0, 1], on `device`."""
    return torch.cat([_render_chunk(sc.select(torch.arange(s, min(s + chunk, len(sc)))), device)
                      for s in range(0, len(sc), chunk)])


def _render_chunk(sc: Scenes, device) -> torch.Tensor:
    n, size = len(sc), IMAGE_SIZE
    palette = PALETTE.to(device)
    px, py = render.pixel_grid(size, device)
    image = palette[sc.background.to(device)][:, :, None, None].expand(n, 3, size, size).clone()
    centre, radius = sc.centre.to(device), sc.radius.to(device)
    for j in range(MAX_OBJECTS):
        for s, name in enumerate(SHAPES):
            rows = (sc.present[:, j] & (sc.shape[:, j] == s)).nonzero().squeeze(1)
            if len(rows) == 0:
                continue
            r = rows.to(device)
            d = render.SHAPE_SDFS[name](px - centre[r, j, 0, None, None], py - centre[r, j, 1, None, None],
                                        radius[r, j, None, None])
            _paint(image, r, render.coverage(d), palette[sc.colour[rows, j].to(device)])
    rows = (sc.kind == PERSON_KIND).nonzero().squeeze(1)
    if len(rows):
        r = rows.to(device)
        d = render.sdf_figure(px, py, sc.keypoints[rows].to(device), sc.height[rows].to(device))
        _paint(image, r, render.coverage(d), palette[sc.colour[rows, 0].to(device)])
    return image


def _paint(image, rows, alpha, colours):
    """image[rows] ← image·(1 − α) + colour·α."""
    a = alpha[:, None]
    image[rows] = image[rows] * (1 - a) + colours[:, :, None, None] * a


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """(n, 3, H, W) floats in [0, 1] → (n, H, W, 3) uint8 on the CPU, for OpenCV and PIL."""
    return (images.clamp(0, 1) * 255 + 0.5).to(torch.uint8).permute(0, 2, 3, 1).cpu()


class CaptionTokenizer:
    """CLIP tokenization of captions, fast: CLIP's BPE works word by word, so a caption's ids
    are BOS + the concatenated ids of its words + EOS, padded with EOS to 77. Our captions use
    only lowercase words, spaces and commas; each distinct word is tokenized once and cached
    (tests check the result equals CLIPTokenizer's)."""

    _WORD = re.compile(r"[a-z]+|,")

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.length = tokenizer.model_max_length
        self.cache: dict[str, list[int]] = {}

    def _word(self, w: str) -> list[int]:
        if w not in self.cache:
            self.cache[w] = self.tokenizer(w, add_special_tokens=False).input_ids
        return self.cache[w]

    def __call__(self, captions: list[str]) -> torch.Tensor:
        bos, eos = self.tokenizer.bos_token_id, self.tokenizer.eos_token_id
        out = torch.full((len(captions), self.length), eos, dtype=torch.long)
        for i, caption in enumerate(captions):
            words = self._WORD.findall(caption)
            if "".join(words) != caption.replace(" ", ""):
                raise ValueError(f"caption outside the fast tokenizer's alphabet: {caption!r}")
            ids = [bos] + [t for w in words for t in self._word(w)][: self.length - 2] + [eos]
            out[i, : len(ids)] = torch.tensor(ids)
        return out
