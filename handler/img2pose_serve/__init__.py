"""img2pose served on TorchServe; ``Img2Pose`` runs the same model in-process (see ``in_process``)."""


def __getattr__(name: str):
    # Imported on first use: the worker imports this package's modules without needing the API.
    if name == "Img2Pose":
        from .in_process import Img2Pose

        return Img2Pose
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["Img2Pose"]
