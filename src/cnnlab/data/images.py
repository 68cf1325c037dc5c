"""Image files as the models see them: which files of a folder are images, and one decoder for every backend.

Every loader (the image-folder workers, the FFCV writer, cnnlab.predict; the CIFAR-folder cache where torchvision's
decoder would differ) reads files through `open_image`, so a file means the same picture everywhere: EXIF rotation
applied, 16-bit greyscale and RGB scaled to 8 bits by their high byte, greyscale/CMYK/palette converted,
transparency composited over white.
"""

from pathlib import Path

import numpy as np
from hydra.errors import CompactHydraException
from PIL import Image, ImageOps

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff"}
UNREADABLE = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)  # what PIL raises on bad files
WIDE = ("I;16", "I;16L", "I;16B", "I;16N", "I")  # 16-bit greyscale (PNG, TIFF); "I" holds 32-bit integers


class DatasetNotFoundError(FileNotFoundError, CompactHydraException):
    """The data is missing, incomplete or not in a layout we read; the message says where and how to get it.
    (A CompactHydraException: under @hydra.main the message is printed alone, as a config error is.)"""


def visible(path: Path) -> bool:
    """False for hidden entries (.ipynb_checkpoints, .git, .DS_Store, ._ AppleDouble files): never classes nor
    images."""
    return not path.name.startswith(".")


def list_image_folder(folder: Path) -> tuple[list[Path], list[int], list[str]]:
    """Files and labels of `folder/<class>/*`, classes sorted by name (torchvision ImageFolder's convention); hidden
    folders and files are left out."""
    classes = sorted(d.name for d in folder.iterdir() if d.is_dir() and visible(d))
    if not classes:
        raise DatasetNotFoundError(f"{folder} has no class folders: expected {folder}/<class>/<image files>")
    files, labels = [], []
    for i, c in enumerate(classes):
        found = sorted(p for p in (folder / c).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and visible(p))
        if not found:
            raise DatasetNotFoundError(f"class folder {folder / c} holds no images ({sorted(IMAGE_SUFFIXES)})")
        files += found
        labels += [i] * len(found)
    return files, labels, classes


def to_8bit(img: Image.Image) -> Image.Image:
    """Greyscale of more than 8 bits -> "L" by the high byte (value >> 8); Pillow's own convert("L"/"RGB") clips
    them at 255, which turns a 16-bit photo almost all white. 16-bit RGB already arrives as 8-bit "RGB"."""
    if img.mode in WIDE:
        x = np.asarray(img).astype(np.int64)
        if img.mode == "I" and x.max(initial=0) > 65535:  # 32-bit integers: the top 8 of the bits in use
            x = x >> max(0, int(x.max()).bit_length() - 8)
        elif img.mode != "I" or x.max(initial=0) > 255:  # "I" within 0..255 is an 8-bit image stored wide
            x = x >> 8
        return Image.fromarray(x.clip(0, 255).astype(np.uint8), mode="L")
    if img.mode == "F":  # float TIFFs: 0-1 scale if that is their range, else 0-255
        x = np.asarray(img, dtype=np.float64)
        x = x * 255 if x.max(initial=0) <= 1 else x
        return Image.fromarray(np.rint(x).clip(0, 255).astype(np.uint8), mode="L")
    return img


def as_model_input(img: Image.Image, channels: int = 3) -> Image.Image:
    """Any decoded PIL image as "RGB" (channels=3) or "L" (channels=1): EXIF rotation applied, more than 8 bits
    scaled down, transparency composited over white (transparent pixels hold arbitrary colours; a viewer shows
    white), greyscale/CMYK/palette converted."""
    img = to_8bit(ImageOps.exif_transpose(img))
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        img = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
    return img.convert("RGB" if channels == 3 else "L")


def open_image(path: Path | str, channels: int = 3) -> Image.Image:
    """The decoded file as as_model_input makes it; raises one of UNREADABLE on corrupt or truncated files."""
    with Image.open(path) as img:
        img.load()  # decodes fully, so a truncated file raises here, not later
        return as_model_input(img, channels)


def open_rgb(path: Path | str) -> Image.Image:
    """open_image as RGB (the image-folder backends)."""
    return open_image(path, 3)
