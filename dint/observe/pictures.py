"""Maps (dint.observe.maps) as pictures: RGB arrays for TensorBoard, and selection.png,
INT's figure for a run: the selected points at chosen steps, black on white, beside the
reconstruction and its error.

Every panel is the map's bins enlarged by a whole factor, without smoothing, so a pixel of a
mask panel is exactly one bin: selection.json gives each panel's box in the PNG.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont, PngImagePlugin

from dint.observe.maps import SignalView

PANEL = 256  # panels are enlarged (by a whole factor) towards this many pixels a side
CAPTION = 36  # pixels under a panel for its caption: two lines
FONT_SIZE = 14
MARGIN = 8
PER_ROW = 6
WAVEFORM_HEIGHT = 96  # audio: the waveform's strip; the selection's strip is under it


def selection_picture(counts: np.ndarray, view: SignalView) -> np.ndarray:
    """Black where points were selected, white where none; grey levels for the share of a
    bin's points selected when bins hold several."""
    share = np.clip(counts / view.area, 0.0, 1.0)
    grey = np.round(255 * (1.0 - share)).astype(np.uint8)
    return _rgb(_strip(grey) if view.ndim == 1 else grey)


def value_picture(values: np.ndarray, view: SignalView) -> np.ndarray:
    """Mean values per bin (training range [-1, 1]) as grey or colour; mid-grey where none."""
    shown = np.nan_to_num(values, nan=0.0)
    if shown.shape[-1] > 3:
        shown = shown[..., :3]
    image = np.round((np.clip(shown, -1.0, 1.0) + 1.0) * 127.5).astype(np.uint8)
    image = image[..., 0] if image.shape[-1] in (1, 2) else image
    return _rgb(_strip(image) if view.ndim == 1 else image)


def error_picture(error: np.ndarray, view: SignalView) -> tuple[np.ndarray, float]:
    """Mean |prediction - target| per bin in the magma colours, 0 to the largest error; and that largest."""
    from matplotlib import colormaps

    top = float(np.nanmax(error)) if np.isfinite(error).any() else 0.0
    scaled = np.nan_to_num(error / top if top > 0 else error * 0.0, nan=0.0)
    colours = (colormaps["magma"](scaled)[..., :3] * 255).round().astype(np.uint8)
    return (_strip(colours) if view.ndim == 1 else colours), top


def waveform_picture(maps: dict, view: SignalView) -> np.ndarray:
    """Audio: the target's envelope in grey and the prediction's in blue, one column a bin,
    each column joined to the one before it so a finely sampled wave reads as a line."""
    width = view.shape[0]
    image = np.full((WAVEFORM_HEIGHT, width, 3), 255, dtype=np.uint8)

    def row(value):
        return np.clip(np.round((1.0 - value) / 2 * (WAVEFORM_HEIGHT - 1)), 0, WAVEFORM_HEIGHT - 1).astype(int)

    for name, colour in (("target", (150, 150, 150)), ("prediction", (40, 80, 200))):
        low, high = maps[f"{name}_low"], maps[f"{name}_high"]
        seen = np.isfinite(high)
        # The previous column's extremes (the column's own where there is none) widen each column's span.
        before_low = np.where(np.roll(seen, 1) & (np.arange(width) > 0), np.roll(low, 1), low)
        before_high = np.where(np.roll(seen, 1) & (np.arange(width) > 0), np.roll(high, 1), high)
        top = row(np.nan_to_num(np.maximum(high, before_low)))
        bottom = row(np.nan_to_num(np.minimum(low, before_high)))
        for x in np.flatnonzero(seen):
            image[top[x] : bottom[x] + 1, x] = colour
    return image


def _strip(values: np.ndarray, height: int = 24) -> np.ndarray:
    """A 1-D map as a strip `height` pixels tall."""
    return np.repeat(values[None], height, axis=0)


def _rgb(grey_or_rgb: np.ndarray) -> np.ndarray:
    return np.repeat(grey_or_rgb[..., None], 3, axis=-1) if grey_or_rgb.ndim == 2 else grey_or_rgb


def selection_panels(
    captured: dict[int, tuple[float, int, np.ndarray]], view: SignalView, maps: dict | None, step: int | None
) -> list[dict]:
    """selection.png's panels: the selection at each captured step ({step: (ratio, points
    selected in the whole signal, counts per bin of the picture)}),
    then, from `maps` (an evaluation at `step`), the reconstruction and its error. Audio's
    selection panels show the waveform (when evaluated) above the strip of selected samples."""
    waveform = waveform_picture(maps, view) if maps is not None and view.ndim == 1 else None
    panels = []
    for at in sorted(captured):
        ratio, selected, counts = captured[at]
        picture = selection_picture(counts, view)
        above = 0
        if waveform is not None:
            picture, above = np.concatenate([waveform, picture]), waveform.shape[0]
        panels.append(
            {
                "title": f"step {at}: ratio {ratio:.3g}\n{selected:,} points selected",
                "kind": "selection",
                "step": at,
                "ratio": ratio,
                "selected": selected,
                "shown": int(counts.sum()),
                "mask_top": above,
                "picture": picture,
            }
        )
    if maps is not None:
        reconstruction = waveform if waveform is not None else value_picture(maps["prediction"], view)
        panels.append(
            {"title": f"reconstruction\nstep {step}", "kind": "reconstruction", "step": step, "picture": reconstruction}
        )
        error, top = error_picture(maps["error"], view)
        panels.append(
            {
                "title": f"|error|, black 0 to {top:.3g}\nstep {step}",
                "kind": "error",
                "step": step,
                "largest_error": top,
                "picture": error,
            }
        )
    return panels


def compose(panels: list[dict], per_row: int = PER_ROW) -> tuple[Image.Image, list[dict]]:
    """`panels` ({"title", "picture": HxWx3 uint8, and anything else to record}) in rows, each
    captioned under it; and each panel's record with its "box" [x0, y0, x1, y1) in the figure
    and the whole "scale" it was enlarged by."""
    scales = [max(1, PANEL // max(p["picture"].shape[:2])) for p in panels]
    sizes = [(p["picture"].shape[1] * s, p["picture"].shape[0] * s) for p, s in zip(panels, scales)]
    rows = [list(range(i, min(i + per_row, len(panels)))) for i in range(0, len(panels), per_row)]
    width = max(sum(sizes[i][0] + MARGIN for i in row) for row in rows) + MARGIN
    heights = [max(sizes[i][1] for i in row) + CAPTION + MARGIN for row in rows]
    figure = Image.new("RGB", (width, sum(heights) + MARGIN), "white")
    draw = ImageDraw.Draw(figure)
    font = ImageFont.load_default(size=FONT_SIZE)
    records, y = [], MARGIN
    for row, height in zip(rows, heights):
        x = MARGIN
        for i in row:
            panel, (w, h) = panels[i], sizes[i]
            picture = Image.fromarray(panel["picture"]).resize((w, h), Image.NEAREST)
            figure.paste(picture, (x, y))
            draw.rectangle([x - 1, y - 1, x + w, y + h], outline=(200, 200, 200))
            for line, text in enumerate(panel["title"].split("\n")[:2]):
                draw.text((x, y + h + 3 + (FONT_SIZE + 2) * line), text, fill="black", font=font)
            records.append(
                {**{k: v for k, v in panel.items() if k != "picture"}, "box": [x, y, x + w, y + h], "scale": scales[i]}
            )
            x += w + MARGIN
        y += height
    return figure, records


def save_dint_png(image: Image.Image, path: Path) -> None:
    """A PNG marked as dint's (its Software text), so dint may later replace it."""
    info = PngImagePlugin.PngInfo()
    info.add_text("Software", "dint")
    image.save(path, format="PNG", pnginfo=info)
