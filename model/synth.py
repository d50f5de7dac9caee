"""Procedural street scenes in Cityscapes format: label ids, instance ids, photo.

A scene is laid out on a ground plane seen in perspective (horizon, vanishing point),
drawn back to front into three canvases at once (label, instance, photo), so occlusion
is consistent between them. The photo is then textured per class at two scales, lit,
and shadowed. Instances (cars, persons, bicycles) carry Cityscapes ids
(label_id * 1000 + k); stuff pixels carry their label id. Parked cars stand in rows
that touch and overlap, which is what instance boundary maps exist for. Every car and
person draws its own colours, so one label map has many valid photos.

Deterministic for a seed (``numpy.random.Generator``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from model.labels import NAME_TO_ID

ROAD, SIDEWALK, BUILDING, POLE = (NAME_TO_ID[n] for n in ("road", "sidewalk", "building", "pole"))
LIGHT, SIGN, VEG, TERRAIN, SKY = (
    NAME_TO_ID[n] for n in ("traffic light", "traffic sign", "vegetation", "terrain", "sky")
)
PERSON, CAR, BICYCLE = NAME_TO_ID["person"], NAME_TO_ID["car"], NAME_TO_ID["bicycle"]

# Car body colours and how common they are (white, black, silver, grey, red, blue, ...).
CAR_COLOURS = np.array(
    [
        [235, 235, 235],
        [25, 25, 28],
        [170, 172, 175],
        [95, 98, 102],
        [165, 25, 25],
        [30, 60, 140],
        [30, 80, 45],
        [200, 180, 140],
        [220, 140, 20],
    ],
    np.float32,
)
CAR_COLOUR_P = np.array([0.22, 0.2, 0.17, 0.14, 0.08, 0.08, 0.04, 0.04, 0.03])

# Per-class texture amplitude: smooth blotches at a 12-pixel scale. There is no
# per-pixel grain: independent pixel noise carries nothing a generator can learn from
# the label map, and chasing it made the demo's images speckled.
_TEXTURE = {
    ROAD: 0.06,
    SIDEWALK: 0.05,
    BUILDING: 0.10,
    VEG: 0.25,
    TERRAIN: 0.15,
    SKY: 0.05,
    POLE: 0.02,
    CAR: 0.02,
    PERSON: 0.05,
    BICYCLE: 0.02,
    SIGN: 0.02,
    LIGHT: 0.02,
}


@dataclass(frozen=True)
class Scene:
    label: np.ndarray  # (H, W) uint8 label ids
    instance: np.ndarray  # (H, W) int32 instance ids (label id for stuff)
    photo: np.ndarray  # (H, W, 3) uint8


class _Canvas:
    """Three canvases drawn together in painter's order."""

    def __init__(self, width: int, height: int) -> None:
        self.w, self.h = width, height
        self.label = Image.new("L", (width, height), SKY)
        self.inst = Image.new("I", (width, height), SKY)
        self.photo = Image.new("RGB", (width, height), (0, 0, 0))
        self.shadow = Image.new("L", (width, height), 0)
        self._dl = ImageDraw.Draw(self.label)
        self._di = ImageDraw.Draw(self.inst)
        self.dp = ImageDraw.Draw(self.photo)
        self.ds = ImageDraw.Draw(self.shadow)

    def polygon(self, pts, label: int, colour, inst: int | None = None) -> None:
        pts = [(float(x), float(y)) for x, y in pts]
        self._dl.polygon(pts, fill=label)
        self._di.polygon(pts, fill=label if inst is None else inst)
        self.dp.polygon(pts, fill=_rgb(colour))

    def ellipse(self, box, label: int, colour, inst: int | None = None) -> None:
        box = [float(v) for v in box]
        self._dl.ellipse(box, fill=label)
        self._di.ellipse(box, fill=label if inst is None else inst)
        self.dp.ellipse(box, fill=_rgb(colour))

    def rect(self, x0, y0, x1, y1, label: int, colour, inst: int | None = None) -> None:
        self.polygon([(x0, y0), (x1, y0), (x1, y1), (x0, y1)], label, colour, inst)


def _rgb(colour) -> tuple[int, int, int]:
    c = np.clip(np.asarray(colour, np.float32), 0, 255)
    return int(c[0]), int(c[1]), int(c[2])


def _noise(rng: np.random.Generator, h: int, w: int, cell: int) -> np.ndarray:
    """Smooth noise in [-1, 1]: a coarse random grid upsampled bilinearly."""
    gh, gw = max(2, h // cell + 2), max(2, w // cell + 2)
    grid = rng.uniform(-1, 1, (gh, gw)).astype(np.float32)
    img = Image.fromarray(grid, mode="F").resize((w + cell, h + cell), Image.BILINEAR)
    oy, ox = rng.integers(0, cell, 2)
    return np.asarray(img)[oy : oy + h, ox : ox + w]


def render_scene(
    rng: np.random.Generator,
    width: int = 256,
    height: int = 128,
    cars: bool = True,
    trees: float = 1.0,
) -> Scene:
    """One scene. ``cars=False`` leaves cars out and ``trees`` scales the number of trees:
    knobs for shifted datasets (drift tests); the defaults draw the bundled dataset."""
    W, H = width, height
    cv = _Canvas(W, H)
    hy = H * rng.uniform(0.36, 0.46)  # horizon
    vx = W * rng.uniform(0.42, 0.58)  # vanishing point
    sun = rng.uniform(0.75, 1.15)  # global light
    sun_left = rng.random() < 0.5  # which facade row is sunlit

    def depth(y: float) -> float:  # 0 at the horizon, 1 at the bottom row
        return max(1e-3, (y - hy) / (H - hy))

    def along(x_near: float, y: float) -> float:  # x of a line through the vanishing point
        return vx + (x_near - vx) * depth(y)

    # --- sky gradient is drawn in the photo by rows
    top, bottom = np.array([60, 110, 180]) * sun, np.array([175, 200, 225]) * sun
    for y in range(int(hy) + 2):
        t = y / max(1.0, hy)
        cv.dp.line([(0, y), (W, y)], fill=_rgb(top * (1 - t) + bottom * t))

    road_half = W * rng.uniform(0.55, 0.8)  # half width of the road at the bottom row
    walk = W * rng.uniform(0.25, 0.45)  # sidewalk width at the bottom row
    left_road, right_road = vx - road_half, vx + road_half
    left_base, right_base = left_road - walk, right_road + walk

    # --- buildings: facades along each side, as quads converging to the vanishing point
    for side in (-1, 1):
        base_near = left_base if side < 0 else right_base
        x = 0.0 if side < 0 else float(W)
        lit = (side < 0) == sun_left
        while (side < 0 and x < vx - 2) or (side > 0 and x > vx + 2):
            span = W * rng.uniform(0.08, 0.25)
            x2 = x - side * span  # walk from the image edge towards the vanishing point
            x2 = min(x2, vx - 1) if side < 0 else max(x2, vx + 1)
            height_factor = rng.uniform(0.6, 2.2) * H
            grey = rng.uniform(90, 200)
            tint = np.array([grey, grey * rng.uniform(0.9, 1.05), grey * rng.uniform(0.85, 1.0)])
            colour = tint * (1.1 if lit else 0.7) * sun
            quad = []
            for xe in (x, x2):
                d = abs(xe - vx) / abs(base_near - vx) if abs(base_near - vx) > 1 else 1.0
                ybase = hy + d * (H - hy)
                quad.append((xe, ybase, hy - height_factor * d))
            pts = [
                (quad[0][0], quad[0][2]),
                (quad[1][0], quad[1][2]),
                (quad[1][0], quad[1][1]),
                (quad[0][0], quad[0][1]),
            ]
            cv.polygon(pts, BUILDING, colour)
            _windows(cv, rng, quad, colour)
            x = x2
    # far end of the street: a row of distant buildings at the horizon
    cv.rect(
        vx - W * 0.1,
        hy - H * rng.uniform(0.05, 0.15),
        vx + W * 0.1,
        hy + 1,
        BUILDING,
        np.array([150, 150, 160]) * sun,
    )

    # --- ground: sidewalks, terrain strips, road with markings
    ground_y = hy
    for base, edge in ((left_base, left_road), (right_base, right_road)):
        pts = [(vx, ground_y), (base, H), (edge, H)]
        cv.polygon(pts, SIDEWALK, np.array([185, 180, 175]) * sun)
        if rng.random() < 0.5:  # grass strip along the kerb
            inner = edge + (base - edge) * 0.25
            cv.polygon(
                [(vx, ground_y), (inner, H), (edge, H)], TERRAIN, np.array([110, 150, 70]) * sun
            )
    cv.polygon(
        [(vx, ground_y), (left_road, H), (right_road, H)], ROAD, np.array([95, 92, 98]) * sun
    )
    for k in range(14):  # dashed centre line, in perspective
        y0 = hy + (H - hy) * (k / 14) ** 1.6
        y1 = hy + (H - hy) * ((k + 0.5) / 14) ** 1.6
        w0, w1 = 0.012 * W * depth(y0), 0.012 * W * depth(y1)
        cv.dp.polygon(
            [(vx - w0, y0), (vx + w0, y0), (vx + w1, y1), (vx - w1, y1)],
            fill=_rgb(np.array([230, 230, 225]) * sun),
        )

    # --- objects on the ground plane, sorted far to near (painter's order)
    objects: list[tuple[float, str, float]] = []  # (y of the foot, kind, x near)
    for side in (-1, 1):
        kerb = left_road if side < 0 else right_road
        base = left_base if side < 0 else right_base
        # a row of parked cars touching/overlapping along the kerb
        y = hy + (H - hy) * rng.uniform(0.08, 0.2)
        while y < H * 1.05:
            objects.append((y, "car", kerb + side * -0.12 * road_half))
            y += (y - hy) * rng.uniform(0.18, 0.32) + 1.0
        for _ in range(round(int(rng.integers(1, 4)) * trees)):
            objects.append(
                (
                    hy + (H - hy) * rng.uniform(0.05, 0.9),
                    "tree",
                    base + (kerb - base) * rng.uniform(0.05, 0.25),
                )
            )
        for _ in range(rng.integers(1, 3)):
            objects.append(
                (hy + (H - hy) * rng.uniform(0.1, 0.95), "pole", kerb + (base - kerb) * 0.08)
            )
        for _ in range(rng.integers(0, 5)):
            objects.append(
                (
                    hy + (H - hy) * rng.uniform(0.1, 1.0),
                    "person",
                    kerb + (base - kerb) * rng.uniform(0.3, 0.9),
                )
            )
        if rng.random() < 0.5:
            objects.append(
                (
                    hy + (H - hy) * rng.uniform(0.2, 0.9),
                    "bicycle",
                    kerb + (base - kerb) * rng.uniform(0.1, 0.3),
                )
            )
    for _ in range(rng.integers(0, 3)):  # moving cars in the lanes
        objects.append(
            (
                hy + (H - hy) * rng.uniform(0.1, 0.9),
                "car",
                vx + rng.choice([-1, 1]) * road_half * rng.uniform(0.2, 0.5),
            )
        )
    if not cars:
        objects = [o for o in objects if o[1] != "car"]
    objects.sort(key=lambda o: o[0])

    counters = {CAR: 0, PERSON: 0, BICYCLE: 0}

    def next_id(label: int) -> int:
        counters[label] += 1
        return label * 1000 + counters[label] - 1

    for y, kind, x_near in objects:
        s = depth(y)
        x = along(x_near, y)
        u = W * s  # pixels per "metre-ish" unit at this depth
        if kind == "car":
            _car(cv, rng, x, y, u, next_id(CAR), sun)
        elif kind == "person":
            _person(cv, rng, x, y, u, next_id(PERSON), sun)
        elif kind == "bicycle":
            _bicycle(cv, rng, x, y, u, next_id(BICYCLE), sun)
        elif kind == "tree":
            _tree(cv, rng, x, y, u, sun)
        else:
            _pole(cv, rng, x, y, u, sun)

    label = np.asarray(cv.label, np.uint8).copy()
    instance = np.asarray(cv.inst).astype(np.int32)
    photo = _finish_photo(
        rng, np.asarray(cv.photo, np.float32), label, np.asarray(cv.shadow, np.float32) / 255.0
    )
    return Scene(label=label, instance=instance, photo=photo)


def _windows(cv: _Canvas, rng, quad, colour) -> None:
    """A perspective grid of windows on one facade (photo only; still 'building'). The
    glass is half a dark blue-grey, half the facade's colour darkened: windows read as
    windows without the near-black-on-white contrast that a small generator turns into
    blotches."""
    (xa, ybase_a, ytop_a), (xb, ybase_b, ytop_b) = quad
    cols, rows = int(rng.integers(2, 6)), int(rng.integers(3, 9))
    glass = 0.5 * np.array([40, 50, 65]) * rng.uniform(0.7, 1.3) + 0.275 * np.asarray(colour)
    for i in range(cols):
        for j in range(rows):
            t0, t1 = (i + 0.25) / cols, (i + 0.75) / cols
            v0, v1 = (j + 0.3) / rows, (j + 0.7) / rows
            pts = []
            for t, v in ((t0, v0), (t1, v0), (t1, v1), (t0, v1)):
                xx = xa + (xb - xa) * t
                top = ytop_a + (ytop_b - ytop_a) * t
                base = ybase_a + (ybase_b - ybase_a) * t
                pts.append((xx, top + (base - top) * v))
            cv.dp.polygon(pts, fill=_rgb(glass if rng.random() < 0.85 else colour * 1.1))


def _car(cv: _Canvas, rng, x, y, u, inst, sun) -> None:
    w = u * rng.uniform(0.17, 0.21)
    h = w * rng.uniform(0.42, 0.5)
    body = CAR_COLOURS[rng.choice(len(CAR_COLOURS), p=CAR_COLOUR_P)]
    body = body * rng.uniform(0.85, 1.15) * sun
    cv.ds.ellipse([x - w * 0.6, y - h * 0.12, x + w * 0.6, y + h * 0.12], fill=150)
    # lower body, cabin with glass, wheels
    cv.rect(x - w / 2, y - h * 0.55, x + w / 2, y - h * 0.08, CAR, body, inst)
    cab = [
        (x - w * 0.36, y - h * 0.55),
        (x - w * 0.26, y - h),
        (x + w * 0.26, y - h),
        (x + w * 0.36, y - h * 0.55),
    ]
    cv.polygon(cab, CAR, body * 0.9, inst)
    cv.dp.polygon(
        [
            (x - w * 0.31, y - h * 0.58),
            (x - w * 0.23, y - h * 0.93),
            (x + w * 0.23, y - h * 0.93),
            (x + w * 0.31, y - h * 0.58),
        ],
        fill=_rgb(np.array([50, 60, 75]) * sun),
    )
    for wx in (x - w * 0.32, x + w * 0.32):
        cv.ellipse([wx - h * 0.16, y - h * 0.3, wx + h * 0.16, y], CAR, (20, 20, 20), inst)
    for lx in (x - w * 0.42, x + w * 0.42):  # lights
        cv.dp.rectangle(
            [lx - w * 0.04, y - h * 0.45, lx + w * 0.04, y - h * 0.36], fill=_rgb((230, 60, 40))
        )


def _person(cv: _Canvas, rng, x, y, u, inst, sun) -> None:
    h = u * rng.uniform(0.16, 0.2)
    w = h * 0.28
    shirt = rng.uniform(30, 230, 3) * sun
    trousers = rng.uniform(20, 120, 3) * sun
    skin = np.array([225, 180, 150]) * rng.uniform(0.55, 1.05) * sun
    cv.ds.ellipse([x - w, y - h * 0.04, x + w, y + h * 0.04], fill=120)
    cv.rect(x - w * 0.45, y - h * 0.48, x - w * 0.05, y, PERSON, trousers, inst)
    cv.rect(x + w * 0.05, y - h * 0.48, x + w * 0.45, y, PERSON, trousers, inst)
    cv.rect(x - w / 2, y - h * 0.82, x + w / 2, y - h * 0.45, PERSON, shirt, inst)
    cv.ellipse([x - w * 0.3, y - h, x + w * 0.3, y - h * 0.8], PERSON, skin, inst)


def _bicycle(cv: _Canvas, rng, x, y, u, inst, sun) -> None:
    r = u * rng.uniform(0.03, 0.04)
    frame = rng.uniform(20, 200, 3) * sun
    for wx in (x - r * 1.3, x + r * 1.3):
        cv.ellipse([wx - r, y - 2 * r, wx + r, y], BICYCLE, (30, 30, 30), inst)
        cv.ellipse(
            [wx - r * 0.6, y - 1.6 * r, wx + r * 0.6, y - 0.4 * r], BICYCLE, frame * 0.5, inst
        )
    cv.polygon(
        [
            (x - r * 1.3, y - r),
            (x, y - r * 2.2),
            (x + r * 1.3, y - r),
            (x + r * 1.1, y - r * 0.8),
            (x, y - r * 1.8),
            (x - r * 1.1, y - r * 0.8),
        ],
        BICYCLE,
        frame,
        inst,
    )


def _tree(cv: _Canvas, rng, x, y, u, sun) -> None:
    h = u * rng.uniform(0.35, 0.6)
    trunk = max(1.0, u * 0.012)
    leaves = np.array([70, 110, 40]) * rng.uniform(0.7, 1.2) * sun
    cv.ds.ellipse([x - h * 0.3, y - h * 0.03, x + h * 0.3, y + h * 0.03], fill=110)
    cv.rect(x - trunk, y - h * 0.55, x + trunk, y, VEG, np.array([80, 60, 40]) * sun)
    r = h * rng.uniform(0.22, 0.32)
    for dx, dy, k in ((0, -0.7, 1.0), (-0.5, -0.55, 0.7), (0.5, -0.6, 0.75)):
        cx, cy, rr = x + dx * r, y + dy * h, r * k
        cv.ellipse([cx - rr, cy - rr, cx + rr, cy + rr], VEG, leaves * rng.uniform(0.85, 1.1))


def _pole(cv: _Canvas, rng, x, y, u, sun) -> None:
    h = u * rng.uniform(0.45, 0.7)
    pw = max(1.0, u * 0.008)
    cv.rect(x - pw, y - h, x + pw, y, POLE, np.array([110, 110, 115]) * sun)
    if rng.random() < 0.5:
        s = u * 0.035
        cv.rect(
            x - pw - s * 0.4,
            y - h - s * 1.1,
            x + pw + s * 0.4,
            y - h + s * 0.4,
            LIGHT,
            (35, 35, 35),
        )
        lamp = [(220, 40, 30), (240, 190, 30), (40, 210, 80)][int(rng.integers(0, 3))]
        cv.dp.ellipse([x - s * 0.25, y - h - s * 0.6, x + s * 0.25, y - h - s * 0.1], fill=lamp)
    else:
        s = u * 0.04
        cy = y - h * 0.8
        if rng.random() < 0.5:
            cv.ellipse([x - s, cy - s, x + s, cy + s], SIGN, (210, 30, 30))
            cv.dp.ellipse(
                [x - s * 0.7, cy - s * 0.7, x + s * 0.7, cy + s * 0.7], fill=(235, 235, 235)
            )
        else:
            cv.rect(x - s, cy - s, x + s, cy + s, SIGN, np.array([30, 80, 180]) * sun)


def _finish_photo(rng, photo: np.ndarray, label: np.ndarray, shadow: np.ndarray) -> np.ndarray:
    h, w = label.shape
    coarse = _noise(rng, h, w, 12)
    amp = np.zeros(256, np.float32)
    for cls, a in _TEXTURE.items():
        amp[cls] = a
    mod = 1.0 + amp[label] * coarse
    ground = np.isin(label, (ROAD, SIDEWALK, TERRAIN))
    mod *= 1.0 - 0.55 * shadow * ground
    vignette = 1.0 - 0.15 * (np.linspace(-1, 1, h)[:, None] ** 2)
    out = photo * (mod * vignette)[..., None]
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)
