#!/usr/bin/env python3
"""What switching an archive to ``precision: bf16`` changes, measured on your weights and photos.

    python scripts/compare_precision.py --checkpoint img2pose_v1.pth \\
        --pose-mean WIDER_train_pose_mean_v1.npy --pose-stddev WIDER_train_pose_stddev_v1.npy photos/ more.jpg
    python scripts/compare_precision.py --demo photos/      # generated demo weights: only to try the tool

Runs the same model in this process in fp32 and in bf16 on every image (directories are read for
image files, not recursively) and compares the FaceDicts the server would return at
``--score-threshold``. Faces are paired across precisions by box IoU (best pairs first, IoU >= 0.5).
Per image and overall it prints: faces in both, faces found in one precision only (with their
confidences), box and keypoint differences in pixels of the original image (median, max), the
rotation difference (angle of the relative rotation, radians), the relative translation difference
``|t_bf16 - t_fp32| / |t_fp32|``, the confidence difference and the speed ratio (fp32 time / bf16
time, both forwards timed alternately on the same image). ``--json`` also writes everything to a
file.

Faces scoring close to the threshold can cross it in either direction under bf16: the confidences
of unpaired faces show whether that is what happened.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from scipy.spatial.transform import Rotation
from torchvision.ops import box_iou

from img2pose_client.inputs import is_image_name
from img2pose_serve.nn.checkpoint import read_checkpoint
from img2pose_serve.nn.faster_dof_rcnn import build_detector
from img2pose_serve.protocol.facedicts import to_face_dicts
from img2pose_serve.runtime.image_decoding import decode_image, image_to_tensor
from img2pose_serve.runtime.runtime_choice import RuntimeChoice
from img2pose_tools.build_mar import BuildError, resolve_pose_stats
from img2pose_tools.demo_checkpoint import build_demo_state_dict

MIN_IOU = 0.5


@dataclass
class Comparison:
    """fp32 against bf16 on one image, or pooled over several."""

    name: str
    fp32_faces: int = 0
    bf16_faces: int = 0
    in_both: int = 0
    only_fp32: list[float] = field(default_factory=list)  # their fp32 confidences
    only_bf16: list[float] = field(default_factory=list)  # their bf16 confidences
    box_px: list[float] = field(default_factory=list)  # per pair: largest coordinate difference
    keypoint_px: list[float] = field(default_factory=list)  # per pair: largest keypoint distance
    rotation_rad: list[float] = field(default_factory=list)
    translation_rel: list[float] = field(default_factory=list)
    confidence: list[float] = field(default_factory=list)
    fp32_seconds: float = 0.0
    bf16_seconds: float = 0.0

    def add(self, other: Comparison) -> None:
        for name, value in asdict(other).items():
            if name != "name":
                setattr(self, name, getattr(self, name) + value)

    @property
    def found_again(self) -> float | None:
        """Share of fp32's faces that bf16 finds too."""
        return self.in_both / self.fp32_faces if self.fp32_faces else None

    @property
    def speed_ratio(self) -> float | None:
        return self.fp32_seconds / self.bf16_seconds if self.bf16_seconds else None


def pair_faces(first: list[dict], second: list[dict]) -> list[tuple[int, int]]:
    """Index pairs (first, second) maximising total IoU, each pair with IoU >= MIN_IOU."""
    if not first or not second:
        return []
    boxes_first = torch.tensor([f["box"] for f in first], dtype=torch.float64)
    boxes_second = torch.tensor([f["box"] for f in second], dtype=torch.float64)
    iou = box_iou(boxes_first, boxes_second).numpy()
    # Boxes clipped to zero area give 0/0: such a box matches only its exact copy.
    identical = (boxes_first[:, None, :] == boxes_second[None, :, :]).all(-1).numpy()
    iou = np.where(np.isnan(iou), identical.astype(np.float64), iou)
    rows, columns = linear_sum_assignment(iou, maximize=True)
    return [(int(r), int(c)) for r, c in zip(rows, columns) if iou[r, c] >= MIN_IOU]


def compare_faces(name: str, fp32: list[dict], bf16: list[dict]) -> Comparison:
    result = Comparison(name, fp32_faces=len(fp32), bf16_faces=len(bf16))
    pairs = pair_faces(fp32, bf16)
    result.in_both = len(pairs)
    result.only_fp32 = [fp32[i]["confidence"] for i in sorted(set(range(len(fp32))) - {i for i, _ in pairs})]
    result.only_bf16 = [bf16[j]["confidence"] for j in sorted(set(range(len(bf16))) - {j for _, j in pairs})]
    for i, j in pairs:
        a, b = fp32[i], bf16[j]
        result.box_px.append(float(np.abs(np.subtract(a["box"], b["box"])).max()))
        points_a = np.array([a["keypoints"][k] for k in a["keypoints"]])
        points_b = np.array([b["keypoints"][k] for k in a["keypoints"]])
        result.keypoint_px.append(float(np.linalg.norm(points_a - points_b, axis=1).max()))
        relative = Rotation.from_rotvec(a["pose"][:3]).inv() * Rotation.from_rotvec(b["pose"][:3])
        result.rotation_rad.append(float(relative.magnitude()))
        t_a, t_b = np.array(a["pose"][3:]), np.array(b["pose"][3:])
        result.translation_rel.append(float(np.linalg.norm(t_b - t_a) / max(np.linalg.norm(t_a), 1e-12)))
        result.confidence.append(abs(a["confidence"] - b["confidence"]))
    return result


def image_files(inputs: list[Path]) -> list[Path]:
    files = []
    for path in inputs:
        if path.is_dir():
            files += sorted(p for p in path.iterdir() if is_image_name(p.name) and p.is_file())
        elif path.is_file():
            files.append(path)
        else:
            raise SystemExit(f"compare_precision.py: not found: {path}")
    if not files:
        raise SystemExit("compare_precision.py: no images found")
    return files


def timed_faces(model, tensor, threshold: float) -> tuple[list[dict], float]:
    started = time.perf_counter()
    prediction = model.detect([tensor])[0]
    seconds = time.perf_counter() - started
    return to_face_dicts(prediction, threshold, -1), seconds


def compare(models: dict, files: list[Path], threshold: float, repeats: int) -> tuple[list[Comparison], Comparison]:
    per_image, overall = [], Comparison("overall")
    for path in files:
        picture = decode_image(path.read_bytes(), 10**9)
        tensor = image_to_tensor(picture)
        faces, seconds = {}, {"fp32": [], "bf16": []}
        for repeat in range(repeats):
            for precision in (("fp32", "bf16") if repeat % 2 == 0 else ("bf16", "fp32")):
                faces[precision], spent = timed_faces(models[precision], tensor, threshold)
                seconds[precision].append(spent)
        result = compare_faces(f"{path.name} ({picture.width}x{picture.height})", faces["fp32"], faces["bf16"])
        result.fp32_seconds = statistics.median(seconds["fp32"])
        result.bf16_seconds = statistics.median(seconds["bf16"])
        per_image.append(result)
        overall.add(result)
        print(row(result), flush=True)
    return per_image, overall


def _median_max(values: list[float], digits: int) -> str:
    if not values:
        return "-"
    return f"{round(statistics.median(values), digits)} / {round(max(values), digits)}"


def _confidences(values: list[float]) -> str:
    return ", ".join(f"{v:.3f}" for v in sorted(values, reverse=True)) or "-"


HEADER = ("| image | faces fp32 / bf16 | in both | only fp32 (conf.) | only bf16 (conf.) | box px med / max "
          "| keypoint px med / max | rotation rad med / max | translation rel. med / max | confidence med / max "
          "| speed fp32/bf16 |\n|---|---|---|---|---|---|---|---|---|---|---|")


def row(c: Comparison) -> str:
    speed = f"{c.speed_ratio:.2f}x" if c.speed_ratio else "-"
    return (f"| {c.name} | {c.fp32_faces} / {c.bf16_faces} | {c.in_both} | {_confidences(c.only_fp32)} "
            f"| {_confidences(c.only_bf16)} | {_median_max(c.box_px, 2)} | {_median_max(c.keypoint_px, 2)} "
            f"| {_median_max(c.rotation_rad, 4)} | {_median_max(c.translation_rel, 4)} "
            f"| {_median_max(c.confidence, 4)} | {speed} |")


def load_models(args) -> dict:
    try:
        mean, stddev, source = resolve_pose_stats(args.checkpoint, args.pose_mean, args.pose_stddev)
    except BuildError as error:
        raise SystemExit(f"compare_precision.py: {error}") from error
    state = build_demo_state_dict() if args.demo else read_checkpoint(args.checkpoint)  # read once for both
    models = {}
    for precision in ("fp32", "bf16"):
        # One image per pass: the handler's CPU setting; each precision on the runtime a worker runs it on
        # (fp32: openvino where it can run), so the speed ratio is the one switching an archive buys.
        model = build_detector(state, pose_mean=mean, pose_stddev=stddev, images_per_pass=1)
        model.set_precision(precision)
        model.set_runtime(RuntimeChoice.for_device("auto", "cpu", precision).effective)
        models[precision] = model
    weights = "DEMO (generated, not the official model; detections meaningless)" if args.demo else args.checkpoint
    print(f"weights: {weights}; pose stats: {source}; torch threads: {torch.get_num_threads()}; "
          f"runtimes: fp32 {models['fp32'].runtime}, bf16 {models['bf16'].runtime}", flush=True)
    return models


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("images", type=Path, nargs="+", help="image files or directories of images")
    parser.add_argument("--checkpoint", type=Path, help="official-layout checkpoint, e.g. img2pose_v1.pth")
    parser.add_argument("--demo", action="store_true",
                        help="use the generated demo weights instead (not the official model: only to try the tool)")
    parser.add_argument("--pose-mean", type=Path, help="WIDER_train_pose_mean_v1.npy")
    parser.add_argument("--pose-stddev", type=Path, help="WIDER_train_pose_stddev_v1.npy")
    parser.add_argument("--score-threshold", type=float, default=0.5, help="faces kept, as the server's default")
    parser.add_argument("--repeats", type=int, default=1, help="timed forwards per image and precision (median)")
    parser.add_argument("--json", type=Path, help="also write the comparison to this file")
    args = parser.parse_args(argv)
    if (args.checkpoint is None) == (not args.demo):
        parser.error("needs --checkpoint CKPT (your img2pose weights), or --demo to try it on generated weights "
                     "whose detections are meaningless")

    files = image_files(args.images)
    models = load_models(args)
    warm_up = image_to_tensor(decode_image(files[0].read_bytes(), 10**9))
    for model in models.values():
        model.detect([warm_up])
    print(HEADER, flush=True)
    per_image, overall = compare(models, files, args.score_threshold, args.repeats)
    print(row(overall))
    found = f"{overall.found_again:.1%}" if overall.found_again is not None else "- (fp32 found no faces)"
    print(f"\nbf16 found {found} of fp32's {overall.fp32_faces} faces again (IoU >= {MIN_IOU}); "
          f"{len(overall.only_bf16)} faces only in bf16; speed fp32/bf16 {overall.speed_ratio:.2f}x "
          f"({overall.fp32_seconds:.1f} s / {overall.bf16_seconds:.1f} s)")
    if args.json:
        report = {"weights": "demo" if args.demo else str(args.checkpoint), "score_threshold": args.score_threshold,
                  "images": [asdict(c) | {"found_again": c.found_again, "speed_ratio": c.speed_ratio}
                             for c in per_image],
                  "overall": asdict(overall) | {"found_again": overall.found_again,
                                                "speed_ratio": overall.speed_ratio}}
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
