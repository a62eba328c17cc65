"""img2pose served on TorchServe; ``Img2Pose`` runs the same model in-process.

Three rooms, each importing only the ones above it in this list:

``nn/`` the network
    ``faster_dof_rcnn``  FasterDoFRCNN (torchvision's GeneralizedRCNN) and ``build_detector`` from a checkpoint
    ``rpn``              region proposals ranked by raw logits, the single-conv RPN head, img2pose's anchors
    ``roi_heads``        the face classifier and the 6DoF pose regressor on shared RoI features
    ``roi_pooling``      multi-scale RoI align spread over the CPU's threads
    ``passes``           running a batch's per-image stages in passes of a few images
    ``pose``             6DoF geometry: global poses, face boxes, keypoints; the pose-statistics check
    ``bf16``             bf16 copies of the heavy stages and the float32 islands between them
    ``openvino_stages``  the CPU runtime's heavy stages: body, FPN top-down and RoI MLPs compiled by OpenVINO
    ``pyramid_convs``    the CPU runtime's pyramid convs: the finest levels' 3x3 by Winograd, 1x1 as matrix products
    ``checkpoint``       reading official-layout checkpoints strictly (data only unless trusted)
    ``reference_data``   facts of the official release shipped in ``nn/data/`` (3D points, pose statistics)

``protocol/`` requests and answers
    ``request_parsing``  one TorchServe request row -> image bytes and detection parameters
    ``open_inference``   the Open Inference Protocol (KServe v2, Triton): parsing and answers
    ``facedicts``        predictions -> FaceDicts (threshold, max_faces, order)
    ``deadline``         the client's deadline header and the forward clock that enforces it
    ``errors``           typed errors, each with its HTTP status
    ``response_headers`` the headers every answer carries

``runtime/`` running an archive
    ``archive_layout``   what an archive holds; staging its model files; loading its detector
    ``handler_config``   the archive's ``handler:`` settings, validated
    ``precision_choice`` which precision a worker runs on its device, and why
    ``precision_measurement`` timing bf16 against fp32 on this machine, where bf16 is native
    ``runtime_choice``   which runtime (torch, openvino) runs a worker's forwards, and why
    ``served_model``     an archive -> the configured model on one device
    ``forward_plan``     which images share a forward without changing anyone's result
    ``group_forward``    running one planned group: decode, forward, smaller retries, one outcome each
    ``image_decoding``   bytes -> RGB tensors exactly as the reference reads them
    ``face_alignment``   aligned face crops from poses, as the reference computes them (in-process and served)
    ``face_drawing``     FaceDicts drawn onto an image (``Img2Pose.visualize``, ``img2pose-visualize``)
    ``handler_batch``    what the TorchServe handler carries through one batch
    ``in_process``       ``Img2Pose``: the reference library's API, in this process

The TorchServe entry point is the module ``img2pose_handler`` beside this package; both travel in
every archive, and a worker imports the archive's own copies (docs/configuration.md).
"""


def __getattr__(name: str):
    # Imported on first use: the worker imports this package's modules without needing the API.
    if name == "Img2Pose":
        from .runtime.in_process import Img2Pose

        return Img2Pose
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["Img2Pose"]
