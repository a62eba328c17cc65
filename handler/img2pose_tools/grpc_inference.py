"""A client of TorchServe's gRPC inference API (``inference.proto``, service ``InferenceAPIsService``).

TorchServe's pip package ships no Python stubs, but its frontend jar carries its ``.proto`` files;
:func:`load_stubs` compiles one with grpcio-tools into a directory and imports the result, so the
stubs always match the installed TorchServe (``open_inference_grpc.proto`` too: TorchServe's own Open
Inference gRPC service, see docs/open-inference.md). Needs ``pip install grpcio grpcio-tools
googleapis-common-protos`` (the project's ``grpc`` extra).

TorchServe 0.12 answers gRPC status OK whatever status the handler set for a request: a rejected
image comes back as an OK response whose body is the handler's JSON error object
(``{"error": ..., "code": 400}``), so a gRPC client must look at the body.
"""

from __future__ import annotations

import importlib.util
import json
import sys
import zipfile
from pathlib import Path
from types import ModuleType

import ts

INFERENCE_PROTO = "inference.proto"
OPEN_INFERENCE_PROTO = "open_inference_grpc.proto"  # served with ts_open_inference_protocol=true


def frontend_jar() -> Path:
    return Path(ts.__file__).resolve().parent / "frontend" / "model-server.jar"


def load_stubs(directory: Path, proto: str = INFERENCE_PROTO) -> tuple[ModuleType, ModuleType]:
    """(X_pb2, X_pb2_grpc) compiled from the installed TorchServe's ``proto/X.proto``."""
    import google.rpc.status_pb2
    from grpc_tools import protoc

    directory.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(frontend_jar()) as jar:
        (directory / proto).write_bytes(jar.read(f"proto/{proto}"))
    googleapis = Path(google.rpc.status_pb2.__file__).resolve().parents[2]  # holds google/rpc/status.proto
    well_known = Path(protoc.__file__).resolve().parent / "_proto"  # google/protobuf/empty.proto
    status = protoc.main(["protoc", f"-I{directory}", f"-I{googleapis}", f"-I{well_known}",
                          f"--python_out={directory}", f"--grpc_python_out={directory}", proto])
    if status != 0:
        raise RuntimeError(f"protoc could not compile proto/{proto} from {frontend_jar()} (exit {status})")
    # The generated grpc module imports its sibling by its top-level name ("inference_pb2").
    stem = proto.removesuffix(".proto")
    return _load_module(f"{stem}_pb2", directory), _load_module(f"{stem}_pb2_grpc", directory)


def _load_module(name: str, directory: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, directory / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


class GrpcInference:
    """``predict`` over gRPC with an inference token, returning the decoded JSON body."""

    def __init__(self, target: str, token: str | None, stubs_dir: Path) -> None:
        import grpc

        self.pb2, pb2_grpc = load_stubs(stubs_dir)
        self.channel = grpc.insecure_channel(target, options=[("grpc.max_send_message_length", 100 * 2**20),
                                                              ("grpc.max_receive_message_length", 100 * 2**20)])
        self.stub = pb2_grpc.InferenceAPIsServiceStub(self.channel)
        self.metadata = [("authorization", f"Bearer {token}")] if token else []

    def predict(self, model: str, inputs: dict[str, bytes], timeout: float = 600) -> object:
        request = self.pb2.PredictionsRequest(model_name=model, input=inputs)
        response = self.stub.Predictions(request, metadata=self.metadata, timeout=timeout)
        return json.loads(response.prediction)

    def close(self) -> None:
        self.channel.close()
