"""Regenerate the committed reference crops: the reference library's aligned faces of a few golden FaceDicts.

    PYTHONPATH=handler python scripts/make_golden_crops.py --reference /tmp/img2pose-ref [--reference-commit C]

The reference library (``--reference``: a checkout of GitHub ``TalHassner/img2pose``; nothing of it is
copied here) is imported from ``<reference>/src`` and constructed as ``Img2Pose(model_path=CHECKPOINT,
device="cpu")`` with the project's demo checkpoint (seed 0, the golden set's). Its public ``align_faces``
then crops, at both sizes, the FaceDicts listed in ``ALIGNED_FACES`` as committed in
``tests/golden/reference_outputs.json`` (``sequential``): no detection runs, so the crops depend only on
those FaceDicts, the images and the reference's alignment (and the OpenCV it runs on: the manifest
records its version). Written to ``tests/golden/aligned/``: one PNG per face and size, and
``manifest.json`` (the recipe, and per crop its file, image, face index, size and the FaceDict used).
tests/test_face_alignment.py compares this project's crops with them. Run it after make_golden.py
whenever the committed outputs change.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import platform
import tempfile
from pathlib import Path

from make_golden import DEMO_SEED, _import_reference, _reference_commit  # beside this script
from PIL import Image

from img2pose_tools.demo_checkpoint import write_demo_checkpoint
from img2pose_tools.torchserve_launcher import REPO

GOLDEN = REPO / "tests" / "golden"
ALIGNED = GOLDEN / "aligned"
SIZES = (112, 224)
# Faces (indices into an image's ``sequential`` FaceDicts) whose crops are committed. Between them the
# reference picks each of its five orientation templates at least twice; 10's face 14 lies mostly
# outside its image (58% of its crop is the black border).
ALIGNED_FACES = {
    "01_rgb_640x480.jpg": (0, 1, 2, 4, 21),
    "09_photo_astronaut_256x256.jpg": (0, 1, 3),
    "10_photo_camera_512x512.png": (3, 4, 12, 14),
}


def reference_crops(checkout: Path, commit: str, checkpoint: Path) -> dict:
    """Writes the reference's crops of ``ALIGNED_FACES`` to ``ALIGNED``; returns their manifest."""
    import cv2

    img2pose = _import_reference(checkout)
    detector = img2pose.Img2Pose(model_path=str(checkpoint), device="cpu")
    faces_by_image = json.loads((GOLDEN / "reference_outputs.json").read_text())["sequential"]
    ALIGNED.mkdir(exist_ok=True)
    for stale in ALIGNED.glob("*.png"):
        stale.unlink()
    crops = []
    for name, indices in ALIGNED_FACES.items():
        faces = [faces_by_image[name][i] for i in indices]
        for size in SIZES:
            aligned = detector.align_faces(str(GOLDEN / "images" / name), faces, output_size=size, return_array=True)
            for index, face, crop in zip(indices, faces, aligned):
                file = f"{Path(name).stem}_face{index}_{size}.png"
                Image.fromarray(crop).save(ALIGNED / file, optimize=True)
                crops.append({"file": file, "image": name, "face_index": index, "size": size, "face": face})
    return {
        "recipe": {
            "reference": "GitHub TalHassner/img2pose, library src/img2pose",
            "reference_commit": commit,
            "call": "Img2Pose(model_path=CHECKPOINT, device='cpu').align_faces(image_path, faces, output_size=size, "
                    "return_array=True): one call per image and size, its faces in the order listed",
            "faces": "reference_outputs.json's sequential FaceDicts, as committed",
            "checkpoint": f"img2pose_tools.demo_checkpoint.write_demo_checkpoint(path, seed={DEMO_SEED})",
            "opencv": cv2.__version__,
            "numpy": importlib.metadata.version("numpy"),
            "scipy": importlib.metadata.version("scipy"),
            "pillow": importlib.metadata.version("pillow"),
            "platform": platform.platform(),
        },
        "crops": crops,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reference", type=Path, required=True, help="checkout of GitHub TalHassner/img2pose")
    parser.add_argument("--reference-commit", help="its commit, when the checkout has no .git (git archive)")
    args = parser.parse_args(argv)
    commit = _reference_commit(args.reference, args.reference_commit)
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = write_demo_checkpoint(Path(tmp) / "demo_seed0.pth", seed=DEMO_SEED)
        manifest = reference_crops(args.reference, commit, checkpoint)
    (ALIGNED / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    print(f"{len(manifest['crops'])} reference crops written to {ALIGNED}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
