"""PNG plots of a classification report, drawn with PIL: the confusion matrix (cells shaded by the row-normalised
rate, counts written in) and per-class precision / recall / F1 bars."""

from __future__ import annotations

from PIL import Image, ImageDraw, ImageFont

CELL = 28  # confusion-matrix cell size in pixels
LABEL_W = 110  # room for class names
BAR_W = 180  # width of a full (1.0) bar
ROW_H = 18
COLOURS = {"precision": (66, 133, 244), "recall": (234, 67, 53), "f1": (52, 168, 83)}


def shade(rate: float) -> tuple[int, int, int]:
    """White (0.0) to dark blue (1.0); darker means a larger share of the row."""
    rate = min(max(rate, 0.0), 1.0)
    return (int(255 - 215 * rate), int(255 - 175 * rate), int(255 - 75 * rate))


def cell_origin(i: int, j: int) -> tuple[int, int]:
    """Top-left pixel of the confusion-matrix cell (true i, predicted j)."""
    return LABEL_W + j * CELL, 30 + i * CELL


def draw_report(report: dict, title: str = "") -> Image.Image:
    """The report as one image: confusion matrix (single-label) on the left, per-class bars below or beside."""
    font = ImageFont.load_default()
    names = [row["class"] for row in report["per_class"]]
    n = len(names)
    matrix_w = LABEL_W + n * CELL + 20 if not report["multi_label"] else 0
    bars_h = 30 + n * 3 * ROW_H + 20
    width = matrix_w + LABEL_W + BAR_W + 60
    height = max(30 + n * CELL + 40, bars_h) if not report["multi_label"] else bars_h
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    draw.text((4, 4), title or f"accuracy {report['accuracy']:.3f}  n={report['num_samples']}", fill="black", font=font)
    if not report["multi_label"]:
        cm = report["confusion_matrix"]
        for j in range(n):
            draw.text((cell_origin(0, j)[0] + 2, 17), names[j][:4], fill="black", font=font)
        for i in range(n):
            draw.text((4, 30 + i * CELL + CELL // 3), names[i][:16], fill="black", font=font)
            total = sum(cm[i])
            for j in range(n):
                x, y = cell_origin(i, j)
                draw.rectangle([x, y, x + CELL - 1, y + CELL - 1], fill=shade(cm[i][j] / total if total else 0.0))
                colour = "white" if total and cm[i][j] / total > 0.6 else "black"
                draw.text((x + 4, y + CELL // 3), str(cm[i][j]), fill=colour, font=font)
        draw.text((LABEL_W, 30 + n * CELL + 6), "rows: true, columns: predicted", fill="black", font=font)
    left = matrix_w
    for i, row in enumerate(report["per_class"]):
        top = 30 + i * 3 * ROW_H
        draw.text((left + 4, top + ROW_H), row["class"][:16], fill="black", font=font)
        for k, metric in enumerate(("precision", "recall", "f1")):
            y = top + k * ROW_H
            x0 = left + LABEL_W
            draw.rectangle([x0, y + 2, x0 + int(BAR_W * row[metric]), y + ROW_H - 3], fill=COLOURS[metric])
            draw.text((x0 + BAR_W + 4, y + 3), f"{metric[0]} {row[metric]:.2f}", fill="black", font=font)
    return image


def save_report_png(report: dict, path: str, title: str = "") -> str:
    draw_report(report, title).save(path, format="PNG")
    return path
