"""Regenerate the committed golden set: synthetic images and the reference library's outputs.

    python scripts/make_golden.py --reference /tmp/img2pose-ref [--out tests/golden]

``--reference`` is a checkout of GitHub ``TalHassner/img2pose`` (its ``src/img2pose`` package is
imported from there; nothing of it is copied into this repository). The outputs are those of the
reference library's ``Img2Pose`` on CPU with 2 torch threads, for the project's demo checkpoint
(``write_demo_checkpoint(path, seed=0)``) on every image in ``<out>/images``: the generated ones
(rewritten here) and the photographs (committed files, listed in ``images/SOURCES.md``).
``tests/golden/README.md`` gives the recipe and what each key of the JSON means.

``--images-only`` rewrites the generated images and stops (no reference checkout needed).

It also writes ``other_sizes.json``: the reference's answers with other resize sizes (its constructor's
``min_size`` / ``max_size``, this project's handler settings of those names) for a few images, at
threshold 0.5 (``OTHER_SIZES``, ``OTHER_SIZE_IMAGES``; ``--sizes`` and ``--size-images`` choose others).
``--other-sizes`` writes that file only, leaving ``reference_outputs.json`` as it is.

``--check-exact`` writes nothing: it runs the reference library and this project's model on this
machine, on the committed images with the same calls, and says whether every output is bit for bit
the same (exit 1 and the differences if not); at the other sizes too, at threshold 0 (with
``--other-sizes``, at the other sizes only: a minute instead of twenty). Bit-for-bit parity holds on
one machine only: fp32 kernels of another instruction set (AVX2 vs AVX-512) change the last bits,
which is why tests/test_golden.py compares the committed outputs within tolerances.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import platform
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from img2pose_serve.runtime.archive_layout import sha256_of
from img2pose_tools.demo_checkpoint import state_dict_sha256
from img2pose_tools.exact_parity import differences_by_image, exact_differences
from img2pose_tools.resize_comparison import size_pair
from img2pose_tools.torchserve_launcher import REPO

DEFAULT_OUT = REPO / "tests" / "golden"
DEMO_SEED = 0
IMAGE_SEED = 20240917
TORCH_THREADS = 2
DEFAULT_THRESHOLD = 0.5
OTHER_SIZES_FILE = "other_sizes.json"
# (min_size, max_size) besides the default 640/1400: py-feat's 400, and a smaller cap on the long side.
OTHER_SIZES = ((400, 1400), (480, 1000))
# Downscaled (640x480 -> 533x400 and 640x480), capped by max_size at 480/1000 (1800x600 -> 1000x333, not
# 1440x480), upscaled (a 256x256 photograph -> 400x400 and 480x480).
OTHER_SIZE_IMAGES = ("01_rgb_640x480.jpg", "07_rgb_1800x600.jpg", "09_photo_astronaut_256x256.jpg")


@dataclass(frozen=True)
class GeneratedImage:
    name: str
    width: int
    height: int
    mode: str  # the PIL mode stored in the file
    faces: int  # face-like sketches drawn into the scene
    face_sizes: tuple[float, float] = (0.12, 0.45)  # face height range, fraction of the short side
    noise: float = 0.0  # std of added sensor noise (grey levels); PNGs stay noise-free to stay small


# Sizes and modes that exercise the resize limits (short side to 640, long side at most 1400) and
# every conversion to RGB the reference performs.
GENERATED = (
    GeneratedImage("01_rgb_640x480.jpg", 640, 480, "RGB", 3, noise=3.0),
    GeneratedImage("02_rgba_480x640.png", 480, 640, "RGBA", 3),
    GeneratedImage("03_rgb_1280x720.jpg", 1280, 720, "RGB", 4, noise=3.0),
    GeneratedImage("04_gray_320x240.png", 320, 240, "L", 2),
    GeneratedImage("05_rgb_1500x1000.png", 1500, 1000, "RGB", 5),
    GeneratedImage("06_palette_100x100.png", 100, 100, "P", 3, face_sizes=(0.2, 0.4)),
    GeneratedImage("07_rgb_1800x600.jpg", 1800, 600, "RGB", 5, noise=3.0),
    GeneratedImage("08_rgb_333x517.png", 333, 517, "RGB", 2),
)


# --- synthetic images ---------------------------------------------------------------------------

def _grid(width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    return np.meshgrid(np.arange(width, dtype=np.float64), np.arange(height, dtype=np.float64))


def _ellipse(x, y, cx, cy, ax, ay, angle=0.0) -> np.ndarray:
    """Soft-edged ellipse mask in [0, 1] (one pixel of anti-aliasing)."""
    c, s = np.cos(angle), np.sin(angle)
    u, v = (x - cx) * c + (y - cy) * s, -(x - cx) * s + (y - cy) * c
    r = np.sqrt((u / ax) ** 2 + (v / ay) ** 2)
    return np.clip((1.0 - r) * min(ax, ay), 0.0, 1.0)


def _paint(canvas: np.ndarray, mask: np.ndarray, colour) -> None:
    canvas += mask[..., None] * (np.asarray(colour, dtype=np.float64) - canvas)


def _background(rng: np.random.Generator, x, y, width: int, height: int) -> np.ndarray:
    """A smooth two-colour gradient with a few soft blobs."""
    top, bottom = rng.uniform(60, 180, size=(2, 3))
    t = (y / max(height - 1, 1))[..., None]
    canvas = top * (1 - t) + bottom * t
    for _ in range(4):
        cx, cy = rng.uniform(0, width), rng.uniform(0, height)
        radius = rng.uniform(0.1, 0.4) * max(width, height)
        weight = np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * radius**2))
        _paint(canvas, 0.5 * weight, rng.uniform(40, 200, size=3))
    return canvas


def _face(rng: np.random.Generator, canvas: np.ndarray, x, y, cx, cy, size: float) -> None:
    """A face sketch: hair, skin oval with shading, eyes, brows, nose and mouth, slightly rotated."""
    angle = rng.uniform(-0.4, 0.4)
    ax, ay = 0.38 * size, 0.5 * size
    c, s = np.cos(angle), np.sin(angle)

    def at(u, v):  # face-frame offset -> image position
        return cx + u * c - v * s, cy + u * s + v * c

    skin = rng.uniform([150, 100, 70], [240, 200, 170])
    _paint(canvas, _ellipse(x, y, *at(0, -0.12 * size), 1.1 * ax, 0.9 * ay, angle), rng.uniform(10, 90, size=3))
    oval = _ellipse(x, y, cx, cy, ax, ay, angle)
    _paint(canvas, oval, skin)
    shade = np.clip(((x - cx) * c + (y - cy) * s) / ax, -1, 1) * oval  # lit from one side
    canvas -= (18 * shade)[..., None]
    for side in (-1, 1):
        _paint(canvas, _ellipse(x, y, *at(side * 0.38 * ax, -0.2 * ay), 0.2 * ax, 0.09 * ay, angle), (245, 245, 240))
        _paint(canvas, _ellipse(x, y, *at(side * 0.38 * ax, -0.2 * ay), 0.09 * ax, 0.08 * ay, angle), (40, 30, 25))
        _paint(canvas, _ellipse(x, y, *at(side * 0.38 * ax, -0.36 * ay), 0.26 * ax, 0.04 * ay, angle), (60, 40, 30))
    _paint(canvas, _ellipse(x, y, *at(0, 0.08 * ay), 0.1 * ax, 0.2 * ay, angle), skin * 0.8)
    _paint(canvas, _ellipse(x, y, *at(0, 0.45 * ay), 0.35 * ax, 0.07 * ay, angle), (150, 50, 60))


def synthetic_scene(spec: GeneratedImage, seed: int = IMAGE_SEED) -> np.ndarray:
    """An RGB uint8 scene of ``spec``'s size with ``spec.faces`` face sketches (deterministic)."""
    rng = np.random.default_rng([seed, *spec.name.encode()])
    x, y = _grid(spec.width, spec.height)
    canvas = _background(rng, x, y, spec.width, spec.height)
    short = min(spec.width, spec.height)
    for _ in range(spec.faces):
        size = rng.uniform(*spec.face_sizes) * short
        cx = rng.uniform(0.3 * size, spec.width - 0.3 * size)
        cy = rng.uniform(0.4 * size, spec.height - 0.4 * size)
        _face(rng, canvas, x, y, cx, cy, size)
    if spec.noise:
        canvas += rng.normal(0, spec.noise, size=canvas.shape)
    return np.clip(np.rint(canvas), 0, 255).astype(np.uint8)


def _in_mode(rgb: np.ndarray, spec: GeneratedImage) -> Image.Image:
    image = Image.fromarray(rgb, "RGB")
    if spec.mode == "RGB":
        return image
    if spec.mode == "L":
        return image.convert("L")
    if spec.mode == "P":
        return image.quantize(colors=64, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    if spec.mode == "RGBA":
        # Alpha from opaque to fully transparent: the reference drops it without compositing.
        x, _ = _grid(spec.width, spec.height)
        alpha = np.clip(255 * (1.2 - x / spec.width), 0, 255).astype(np.uint8)
        return Image.fromarray(np.dstack([rgb, alpha]), "RGBA")
    raise ValueError(f"unsupported mode {spec.mode}")


def write_generated_images(images_dir: Path) -> list[Path]:
    images_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for spec in GENERATED:
        path = images_dir / spec.name
        image = _in_mode(synthetic_scene(spec), spec)
        if path.suffix == ".jpg":
            image.save(path, quality=90)
        else:
            image.save(path, optimize=True)
        paths.append(path)
    return paths


def golden_image_paths(images_dir: Path) -> list[Path]:
    """Every image of the set, generated and photographs, in name order."""
    return sorted(p for p in images_dir.iterdir() if p.suffix in (".jpg", ".png"))


# --- reference outputs --------------------------------------------------------------------------

def _import_reference(checkout: Path):
    """The reference library (package ``img2pose``), imported from ``checkout/src``."""
    source = checkout / "src"
    if not (source / "img2pose" / "detector.py").is_file():
        raise SystemExit(f"{checkout} is not a TalHassner/img2pose checkout (no src/img2pose/detector.py)")
    sys.path.insert(0, str(source))
    import img2pose

    if Path(img2pose.__file__).resolve().parent != (source / "img2pose").resolve():
        raise SystemExit(f"imported img2pose from {img2pose.__file__}, not from {source}")
    return img2pose


def _reference_commit(checkout: Path, given: str | None) -> str:
    if given:
        return given
    result = subprocess.run(["git", "-C", str(checkout), "rev-parse", "HEAD"], capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"{checkout} is not a git checkout: pass --reference-commit")
    return result.stdout.strip()


def _set_pose_stats(detector, mean, stddev) -> None:
    """Put pose statistics on the reference model after construction.

    ``Img2Pose(model_path=...)`` decodes with the identity statistics; its RoI heads read
    ``pose_mean`` / ``pose_stddev`` at every forward, so replacing them there changes the decoding.
    """
    import torch

    roi_heads = detector._model.fpn_model.module.roi_heads
    roi_heads.pose_mean = torch.tensor(mean, dtype=torch.float32)
    roi_heads.pose_stddev = torch.tensor(stddev, dtype=torch.float32)


def _version(package: str) -> str:
    return importlib.metadata.version(package)


def size_key(min_size: int, max_size: int) -> str:
    """How other_sizes.json names a pair of sizes: ``"400/1400"``."""
    return f"{min_size}/{max_size}"


def _image_facts(images: list[Path]) -> dict:
    def size_and_mode(path: Path) -> dict:
        with Image.open(path) as image:
            return {"width": image.width, "height": image.height, "mode": image.mode}

    return {p.name: {**size_and_mode(p), "sha256": sha256_of(p)} for p in images}


def _recipe(img2pose, commit: str, checkpoint: Path, call: str) -> dict:
    import torch

    return {
        "reference": "GitHub TalHassner/img2pose, library src/img2pose",
        "reference_commit": commit,
        "reference_version": img2pose.__version__,
        "call": call,
        "checkpoint": {
            "generator": f"img2pose_tools.demo_checkpoint.write_demo_checkpoint(path, seed={DEMO_SEED})",
            "demo_seed": DEMO_SEED,
            "state_dict_sha256": state_dict_sha256(checkpoint),
        },
        "torch_num_threads": TORCH_THREADS,
        "device": "cpu",
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "torchvision": _version("torchvision"),
        "scipy": _version("scipy"),
        "numpy": _version("numpy"),
        "pillow": _version("pillow"),
        "image_seed": IMAGE_SEED,
    }


def reference_outputs(checkout: Path, commit: str, images: list[Path], checkpoint: Path) -> dict:
    """Run the reference library on every image: the golden JSON document."""
    import torch

    from img2pose_serve.nn.reference_data import published_pose_stats

    img2pose = _import_reference(checkout)
    torch.set_num_threads(TORCH_THREADS)
    detector = img2pose.Img2Pose(model_path=str(checkpoint), device="cpu", score_threshold=DEFAULT_THRESHOLD)

    def run(threshold: float) -> dict[str, list]:
        return {p.name: detector.detect_faces(str(p), score_threshold=threshold) for p in images}

    sequential = run(DEFAULT_THRESHOLD)
    sequential_threshold0 = run(0.0)
    mean, stddev = published_pose_stats()
    _set_pose_stats(detector, mean, stddev)
    alt_sequential = run(DEFAULT_THRESHOLD)

    return {
        "recipe": _recipe(img2pose, commit, checkpoint,
                          f"Img2Pose(model_path=CHECKPOINT, device='cpu', score_threshold={DEFAULT_THRESHOLD})"
                          ".detect_faces(image_path, score_threshold=T), one image per call"),
        "images": _image_facts(images),
        "sequential": sequential,
        "sequential_threshold0": sequential_threshold0,
        "alt_pose_stats": {
            "how": "Img2Pose(model_path=CHECKPOINT, ...) as above, then on "
                   "detector._model.fpn_model.module.roi_heads: pose_mean = torch.tensor(pose_mean, "
                   "dtype=torch.float32), pose_stddev = torch.tensor(pose_stddev, dtype=torch.float32)",
            "source": "handler/img2pose_serve/nn/data/pose_stats_approx.json (published 4-decimal official stats)",
            "pose_mean": mean.tolist(),
            "pose_stddev": stddev.tolist(),
            "threshold": DEFAULT_THRESHOLD,
            "sequential": alt_sequential,
        },
    }


def reference_outputs_at_sizes(checkout: Path, commit: str, images: list[Path], checkpoint: Path,
                               sizes: list[tuple[int, int]], threshold: float) -> dict:
    """The reference library's FaceDicts at each (min_size, max_size), identity pose statistics, one image
    per call: the other_sizes.json document."""
    import torch

    img2pose = _import_reference(checkout)
    torch.set_num_threads(TORCH_THREADS)
    by_size = {}
    for min_size, max_size in sizes:
        detector = img2pose.Img2Pose(model_path=str(checkpoint), device="cpu", score_threshold=DEFAULT_THRESHOLD,
                                     min_size=min_size, max_size=max_size)
        by_size[size_key(min_size, max_size)] = {
            "min_size": min_size, "max_size": max_size,
            "sequential": {p.name: detector.detect_faces(str(p), score_threshold=threshold) for p in images}}
    return {
        "recipe": _recipe(img2pose, commit, checkpoint,
                          f"Img2Pose(model_path=CHECKPOINT, device='cpu', score_threshold={DEFAULT_THRESHOLD}, "
                          f"min_size=MIN, max_size=MAX).detect_faces(image_path, score_threshold={threshold}), "
                          "one image per call"),
        "threshold": threshold,
        "images": _image_facts(images),
        "sizes": by_size,
    }


def our_outputs(images: list[Path], checkpoint: Path) -> dict:
    """This project's FaceDicts for ``images``, keyed as ``reference_outputs`` keys them."""
    import torch

    from img2pose_serve import Img2Pose
    from img2pose_serve.nn.reference_data import published_pose_stats

    torch.set_num_threads(TORCH_THREADS)

    def run(detector: Img2Pose, threshold: float) -> dict[str, list]:
        return {p.name: detector.detect_faces(p, score_threshold=threshold, max_faces=-1) for p in images}

    # The torch runtime: the one whose arithmetic is the reference's, bit for bit (openvino's is within tolerances).
    identity = run(Img2Pose.from_checkpoint(checkpoint, runtime="torch"), 0.0)
    alt = run(Img2Pose.from_checkpoint(checkpoint, *published_pose_stats(), runtime="torch"), DEFAULT_THRESHOLD)
    return {
        "sequential": {name: [f for f in faces if f["confidence"] >= DEFAULT_THRESHOLD]
                       for name, faces in identity.items()},
        "sequential_threshold0": identity,
        "alt_pose_stats": {"sequential": alt},
    }


def our_outputs_at_sizes(images: list[Path], checkpoint: Path, sizes: list[tuple[int, int]],
                         threshold: float) -> dict[str, dict[str, list]]:
    """This project's FaceDicts per ``size_key`` and image (torch runtime, the sizes as handler settings)."""
    import torch

    from img2pose_serve import Img2Pose

    torch.set_num_threads(TORCH_THREADS)
    by_size = {}
    for min_size, max_size in sizes:
        detector = Img2Pose.from_checkpoint(checkpoint, runtime="torch", min_size=min_size, max_size=max_size)
        by_size[size_key(min_size, max_size)] = {
            p.name: detector.detect_faces(p, score_threshold=threshold, max_faces=-1) for p in images}
    return by_size


def _compact_face(face: dict) -> dict:
    """The reference's FaceDict with shorter numbers, none of them changed beyond what matters.

    Box, confidence and pose are float32 values: each is written as the shortest decimal that reads
    back to the same float32. Keypoints are computed in float64: rounded to 1e-6 px.
    """
    def f32(values):
        return [float(str(np.float32(v))) for v in values]

    return {
        "box": f32(face["box"]),
        "confidence": f32([face["confidence"]])[0],
        "pose": f32(face["pose"]),
        "keypoints": {name: [round(v, 6) for v in point] for name, point in face["keypoints"].items()},
    }


def _compact_by_image(results: dict) -> dict:
    return {name: [_compact_face(f) for f in faces] for name, faces in results.items()}


def compact(document: dict) -> dict:
    """``document`` with every FaceDict list made compact (``_compact_face``)."""
    alt = document["alt_pose_stats"]
    return {
        **document,
        "sequential": _compact_by_image(document["sequential"]),
        "sequential_threshold0": _compact_by_image(document["sequential_threshold0"]),
        "alt_pose_stats": {**alt, "sequential": _compact_by_image(alt["sequential"])},
    }


def compact_sizes(document: dict) -> dict:
    """The other_sizes.json document with every FaceDict list made compact."""
    return {**document, "sizes": {key: {**entry, "sequential": _compact_by_image(entry["sequential"])}
                                  for key, entry in document["sizes"].items()}}


def _summary(document: dict) -> str:
    lines = [f"{'image':32s} {'@0.5':>5s} {'@0':>5s} {'alt@0.5':>8s} {'closest score to 0.5':>21s}"]
    for name in document["images"]:
        scores = [f["confidence"] for f in document["sequential_threshold0"][name]]
        closest = min((abs(s - DEFAULT_THRESHOLD) for s in scores), default=float("nan"))
        lines.append(f"{name:32s} {len(document['sequential'][name]):5d} {len(scores):5d} "
                     f"{len(document['alt_pose_stats']['sequential'][name]):8d} {closest:21.5f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reference", type=Path, help="checkout of GitHub TalHassner/img2pose")
    parser.add_argument("--reference-commit", help="its commit, when the checkout has no .git (git archive)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="golden directory (default tests/golden)")
    parser.add_argument("--images-only", action="store_true", help="rewrite the generated images only")
    parser.add_argument("--check-exact", action="store_true",
                        help="write nothing: compare this project's outputs with the reference's on this machine, "
                             "bit for bit")
    parser.add_argument("--other-sizes", action="store_true",
                        help=f"only the other resize sizes: write {OTHER_SIZES_FILE} (the committed images are "
                             "left as they are) or, with --check-exact, check them only")
    parser.add_argument("--sizes", type=size_pair, nargs="+",
                        default=list(OTHER_SIZES), metavar="MIN/MAX",
                        help="the other sizes (default: " + " ".join(size_key(*s) for s in OTHER_SIZES) + ")")
    parser.add_argument("--size-images", nargs="+", default=list(OTHER_SIZE_IMAGES), metavar="NAME",
                        help="the images run at the other sizes (default: " + " ".join(OTHER_SIZE_IMAGES) + ")")
    args = parser.parse_args(argv)

    images_dir = args.out / "images"
    if args.check_exact and args.images_only:
        parser.error("--check-exact writes nothing: drop --images-only")
    if args.other_sizes and args.images_only:
        parser.error("--other-sizes leaves the images as they are: drop --images-only")
    if not (args.check_exact or args.other_sizes):
        write_generated_images(images_dir)
    if args.images_only:
        return 0
    if args.reference is None:
        parser.error("--reference is required (or --images-only)")
    size_images = [images_dir / name for name in args.size_images]
    missing = [str(path) for path in size_images if not path.is_file()]
    if missing:
        parser.error(f"--size-images: no such image: {', '.join(missing)}")

    from img2pose_tools.demo_checkpoint import write_demo_checkpoint

    commit = "unrecorded" if args.check_exact else _reference_commit(args.reference, args.reference_commit)
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = write_demo_checkpoint(Path(tmp) / "demo_seed0.pth", seed=DEMO_SEED)
        images = golden_image_paths(images_dir)
        if args.check_exact:
            return _check_exact(args, images, size_images, checkpoint)
        document = None if args.other_sizes else reference_outputs(args.reference, commit, images, checkpoint)
        at_sizes = reference_outputs_at_sizes(args.reference, commit, size_images, checkpoint, args.sizes,
                                              DEFAULT_THRESHOLD)
    if document is not None:
        (args.out / "reference_outputs.json").write_text(json.dumps(compact(document), separators=(",", ":")) + "\n")
        print(_summary(document))
    (args.out / OTHER_SIZES_FILE).write_text(json.dumps(compact_sizes(at_sizes), separators=(",", ":")) + "\n")
    print(_sizes_summary(at_sizes))
    return 0


def _check_exact(args, images: list[Path], size_images: list[Path], checkpoint: Path) -> int:
    """Run the reference and this project on this machine and print whether they agree bit for bit."""
    problems, said = [], []
    if not args.other_sizes:
        document = reference_outputs(args.reference, "unrecorded", images, checkpoint)
        problems += exact_differences(document, our_outputs(images, checkpoint))
        faces = sum(len(f) for f in document["sequential_threshold0"].values())
        said.append(f"{len(images)} images, {faces} faces at threshold 0, "
                    f"torch CPU capability {document['recipe']['cpu_capability']}")
    at_sizes = reference_outputs_at_sizes(args.reference, "unrecorded", size_images, checkpoint, args.sizes, 0.0)
    ours = our_outputs_at_sizes(size_images, checkpoint, args.sizes, 0.0)
    for key, entry in at_sizes["sizes"].items():
        problems += differences_by_image(f"min_size/max_size {key}", entry["sequential"], ours[key])
    faces = sum(len(f) for entry in at_sizes["sizes"].values() for f in entry["sequential"].values())
    said.append(f"at min_size/max_size {', '.join(at_sizes['sizes'])}: {len(size_images)} images, {faces} faces at "
                f"threshold 0, torch CPU capability {at_sizes['recipe']['cpu_capability']}")
    print("\n".join(problems) if problems else "bit for bit equal on this machine: " + "; ".join(said))
    return 1 if problems else 0


def _sizes_summary(document: dict) -> str:
    lines = [f"{'min_size/max_size':18s} {'image':32s} {'@' + str(document['threshold']):>5s}"]
    for key, entry in document["sizes"].items():
        lines += [f"{key:18s} {name:32s} {len(faces):5d}" for name, faces in entry["sequential"].items()]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
