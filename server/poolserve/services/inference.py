"""The Open Inference Protocol (KServe v2 / Triton gRPC), inference.GRPCInferenceService.

A thin adapter, like the native servicer: it finds the model, decodes the input
(:mod:`.oip_tensors`), hands the model's PoolSpec and the array to the same
:class:`~poolserve.dispatch.Dispatcher` the native API uses (which validates and runs it, once),
and encodes the outputs.  Errors go through the same :class:`.scope.Scope`, so a bad shape is
INVALID_ARGUMENT with the field named here as there; an unknown model or region is NOT_FOUND.

Per-worker state: the shared-memory registry and the statistics belong to the process.  With
``--workers N`` a client's calls stay on one worker as long as they share a channel (one HTTP/2
connection), which is what tritonclient does.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Callable

import grpc

from poolclient._proto.inference import grpc_service_pb2 as pb
from poolclient._proto.inference import grpc_service_pb2_grpc as pb_grpc
from poolclient._proto.inference import model_config_pb2 as mc

from .. import __version__
from ..dispatch import Dispatcher
from ..errors import NotFound, classify
from ..models import INDICES, OUTPUT, VERSION, Model
from ..shm import SharedMemoryRegistry
from ..spec import SpecError
from .oip_tensors import decode_input, encode_outputs, shm_ref, string_param
from .scope import Scope

log = logging.getLogger("poolserve.inference")

SERVICE_NAME = "inference.GRPCInferenceService"
EXTENSIONS = ("model_configuration", "system_shared_memory", "statistics", "parameters")
_DATA_TYPE = {"FP32": mc.TYPE_FP32, "FP16": mc.TYPE_FP16, "FP64": mc.TYPE_FP64, "INT8": mc.TYPE_INT8,
              "UINT8": mc.TYPE_UINT8, "INT64": mc.TYPE_INT64}


class ModelStats:
    """Counts and cumulative nanoseconds for ModelStatistics; one lock, tiny critical sections."""

    PHASES = ("success", "fail", "compute_input", "compute_infer", "compute_output")

    def __init__(self):
        self._lock = threading.Lock()
        self.count = dict.fromkeys(self.PHASES, 0)
        self.ns = dict.fromkeys(self.PHASES, 0)
        self.last_inference_ms = 0

    def success(self, total_ns: int, input_ns: int, infer_ns: int, output_ns: int) -> None:
        with self._lock:
            for phase, ns in (("success", total_ns), ("compute_input", input_ns),
                              ("compute_infer", infer_ns), ("compute_output", output_ns)):
                self.count[phase] += 1
                self.ns[phase] += ns
            self.last_inference_ms = time.time_ns() // 1_000_000

    def fail(self, total_ns: int) -> None:
        with self._lock:
            self.count["fail"] += 1
            self.ns["fail"] += total_ns

    def to_proto(self, name: str) -> pb.ModelStatistics:
        with self._lock:
            d = {p: pb.StatisticDuration(count=self.count[p], ns=self.ns[p]) for p in self.PHASES}
            n = self.count["success"]
            last = self.last_inference_ms
        # no batching across requests: each request is one inference and one execution
        return pb.ModelStatistics(name=name, version=VERSION, last_inference=last, inference_count=n,
                                  execution_count=n, inference_stats=pb.InferStatistics(**d))


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):
    def __init__(self, dispatcher: Dispatcher, models: dict[str, Model], shm: SharedMemoryRegistry,
                 ready: Callable[[], bool] = lambda: True):
        self.dispatcher = dispatcher
        self.models = dict(models)
        self.shm = shm
        self.ready = ready  # False while the server drains at shutdown
        self.stats = {name: ModelStats() for name in self.models}

    # -- lookups ---------------------------------------------------------------------------------
    def _model(self, name: str, version: str) -> Model:
        model = self.models.get(name)
        if model is None:
            raise NotFound(f"unknown model {name!r}; RepositoryIndex lists the {len(self.models)} models")
        if version not in ("", VERSION):
            raise NotFound(f"model {name!r} has no version {version!r}; its only version is {VERSION!r}")
        return model

    # -- health and metadata ---------------------------------------------------------------------
    def ServerLive(self, request, context):
        with Scope("ServerLive", context):
            return pb.ServerLiveResponse(live=True)

    def ServerReady(self, request, context):
        with Scope("ServerReady", context):
            return pb.ServerReadyResponse(ready=self.ready())

    def ModelReady(self, request, context):
        with Scope("ModelReady", context):
            # Triton's answer for a model it does not have is "not ready", not an error
            known = request.name in self.models and request.version in ("", VERSION)
            return pb.ModelReadyResponse(ready=known and self.ready())

    def ServerMetadata(self, request, context):
        with Scope("ServerMetadata", context):
            return pb.ServerMetadataResponse(name="poolserve", version=__version__, extensions=EXTENSIONS)

    def ModelMetadata(self, request, context):
        with Scope("ModelMetadata", context):
            m = self._model(request.name, request.version)
            T = pb.ModelMetadataResponse.TensorMetadata
            outputs = [T(name=OUTPUT, datatype=m.datatype, shape=m.output_shape())]
            if INDICES in m.outputs:
                outputs.append(T(name=INDICES, datatype="INT64", shape=m.output_shape()))
            return pb.ModelMetadataResponse(
                name=m.name, versions=[VERSION], platform=f"poolserve_{m.backend or 'auto'}",
                inputs=[T(name="input", datatype=m.datatype, shape=m.input_shape())], outputs=outputs)

    def ModelConfig(self, request, context):
        with Scope("ModelConfig", context):
            m = self._model(request.name, request.version)
            fmt = mc.ModelInput.FORMAT_NONE
            if m.rank == 2:
                fmt = mc.ModelInput.FORMAT_NCHW if m.spec.layout == "channels_first" else mc.ModelInput.FORMAT_NHWC
            outputs = [mc.ModelOutput(name=OUTPUT, data_type=_DATA_TYPE[m.datatype], dims=m.output_shape())]
            if INDICES in m.outputs:
                outputs.append(mc.ModelOutput(name=INDICES, data_type=mc.TYPE_INT64, dims=m.output_shape()))
            config = mc.ModelConfig(
                name=m.name, platform="poolserve", backend=m.backend or "auto",
                version_policy=mc.ModelVersionPolicy(latest=mc.ModelVersionPolicy.Latest(num_versions=1)),
                # 0: no implicit batch axis; the batch is the input's own first dimension
                max_batch_size=0,
                input=[mc.ModelInput(name="input", data_type=_DATA_TYPE[m.datatype], format=fmt,
                                     dims=m.input_shape())],
                output=outputs,
                instance_group=[mc.ModelInstanceGroup(name=m.name, kind=mc.ModelInstanceGroup.KIND_CPU, count=1)],
                parameters={k: mc.ModelParameter(string_value=v) for k, v in m.parameters().items()})
            return pb.ModelConfigResponse(config=config)

    def RepositoryIndex(self, request, context):
        with Scope("RepositoryIndex", context):
            if request.repository_name:
                raise NotFound(f"unknown repository {request.repository_name!r}; poolserve has one, named ''")
            return pb.RepositoryIndexResponse(models=[
                pb.RepositoryIndexResponse.ModelIndex(name=n, version=VERSION, state="READY")
                for n in sorted(self.models)])

    def ModelStatistics(self, request, context):
        with Scope("ModelStatistics", context):
            names = [self._model(request.name, request.version).name] if request.name else sorted(self.models)
            return pb.ModelStatisticsResponse(model_stats=[self.stats[n].to_proto(n) for n in names])

    # -- inference --------------------------------------------------------------------------------
    def _wanted(self, request: pb.ModelInferRequest, model: Model):
        """[(output name, shared-memory place or None)]: what the client asked for, or `output`."""
        if not request.outputs:
            return [(OUTPUT, None)]
        wanted, seen = [], set()
        for i, o in enumerate(request.outputs):
            if o.name not in model.outputs:
                raise SpecError(f"outputs[{i}].name", o.name,
                                f"model {model.name!r} has outputs {', '.join(model.outputs)}")
            if o.name in seen:
                raise SpecError(f"outputs[{i}].name", o.name, "is requested twice")
            if "classification" in o.parameters:  # Triton's top-k labels: refused, never ignored
                raise SpecError(f"outputs[{i}].parameters['classification']",
                                o.parameters["classification"].int64_param, "pooling models have no classes")
            seen.add(o.name)
            wanted.append((o.name, shm_ref(o.parameters, f"outputs[{i}]")))
        return wanted

    def _infer(self, s: Scope, request: pb.ModelInferRequest) -> pb.ModelInferResponse:
        model = self._model(request.model_name, request.model_version)
        stats = self.stats[model.name]
        s.op = model.spec.mode
        t0 = time.perf_counter_ns()
        try:
            # request parameters may choose the backend (and provider) over the model's
            backend = string_param(request.parameters, "backend", "parameters") or model.backend
            provider = string_param(request.parameters, "provider", "parameters") or model.provider
            wanted = self._wanted(request, model)
            x = decode_input(request, model, self.shm, self.dispatcher.max_elements)
            s.shape, s.bytes_in = x.shape, x.nbytes
            s.check_deadline()
            spec = model.spec
            if any(name == INDICES for name, _ in wanted):
                spec = spec.replace(return_indices=True)
            t1 = time.perf_counter_ns()
            try:
                r = self.dispatcher.forward(spec, x, backend=backend, provider=provider)
            except SpecError as e:  # the dispatcher names the native API's field; name ours
                if e.field not in ("spec.backend", "spec.provider"):
                    raise
                raise SpecError(f"parameters[{e.field[5:]!r}]", e.value, str(e).split(": ", 1)[-1]) from None
            t2 = time.perf_counter_ns()
            s.backend = r.backend
            response = pb.ModelInferResponse(model_name=model.name, model_version=VERSION, id=request.id)
            response.parameters["backend"].string_param = r.backend
            s.bytes_out = encode_outputs(response, wanted, {OUTPUT: r.output, INDICES: r.indices}, self.shm)
            t3 = time.perf_counter_ns()
        except Exception:
            stats.fail(time.perf_counter_ns() - t0)
            raise
        stats.success(t3 - t0, t1 - t0, t2 - t1, t3 - t2)
        return response

    def ModelInfer(self, request, context):
        with Scope("ModelInfer", context) as s:
            return self._infer(s, request)

    def ModelStreamInfer(self, request_iterator, context):
        """One response per request, in order.  A request that fails answers error_message (the
        status's text) and the stream goes on, as Triton does; only a broken stream ends it."""
        with Scope("ModelStreamInfer", context) as s:
            for request in request_iterator:
                t0 = time.perf_counter()
                s.op = s.backend = ""
                s.bytes_in = s.bytes_out = 0
                try:
                    response = self._infer(s, request)
                except Exception as e:  # noqa: BLE001 -- classified like a unary call's
                    failure = classify(e, s.request_id)
                    if failure.internal:
                        log.error("unexpected exception", exc_info=e, extra={"fields": {
                            "rpc": s.rpc, "request_id": s.request_id}})
                    s.record(failure.code.name, t0=t0, bytes_in=s.bytes_in)
                    yield pb.ModelStreamInferResponse(
                        error_message=f"{failure.code.name}: {failure.message}",
                        infer_response=pb.ModelInferResponse(model_name=request.model_name,
                                                             model_version=request.model_version, id=request.id))
                    continue
                s.record("OK", t0=t0, bytes_in=s.bytes_in, bytes_out=s.bytes_out)
                yield pb.ModelStreamInferResponse(infer_response=response)

    # -- system shared memory ---------------------------------------------------------------------
    def SystemSharedMemoryRegister(self, request, context):
        with Scope("SystemSharedMemoryRegister", context):
            self.shm.register(request.name, request.key, request.offset, request.byte_size)
            return pb.SystemSharedMemoryRegisterResponse()

    def SystemSharedMemoryUnregister(self, request, context):
        with Scope("SystemSharedMemoryUnregister", context):
            self.shm.unregister(request.name)
            return pb.SystemSharedMemoryUnregisterResponse()

    def SystemSharedMemoryStatus(self, request, context):
        with Scope("SystemSharedMemoryStatus", context):
            R = pb.SystemSharedMemoryStatusResponse.RegionStatus
            return pb.SystemSharedMemoryStatusResponse(regions={
                r.name: R(name=r.name, key=r.key, offset=r.offset, byte_size=r.byte_size)
                for r in self.shm.status(request.name)})

    # -- the rest: UNIMPLEMENTED, saying why ------------------------------------------------------
    def _unimplemented(self, context, rpc: str, why: str):
        context.abort(grpc.StatusCode.UNIMPLEMENTED, f"poolserve does not implement {rpc}: {why}")

    def RepositoryModelLoad(self, request, context):
        self._unimplemented(context, "RepositoryModelLoad", "models are declared at start-up (--model-repository)")

    def RepositoryModelUnload(self, request, context):
        self._unimplemented(context, "RepositoryModelUnload", "models are declared at start-up (--model-repository)")

    def CudaSharedMemoryStatus(self, request, context):
        self._unimplemented(context, "CudaSharedMemoryStatus", "no CUDA shared memory; use system shared memory")

    def CudaSharedMemoryRegister(self, request, context):
        self._unimplemented(context, "CudaSharedMemoryRegister", "no CUDA shared memory; use system shared memory")

    def CudaSharedMemoryUnregister(self, request, context):
        self._unimplemented(context, "CudaSharedMemoryUnregister", "no CUDA shared memory; use system shared memory")

    def TraceSetting(self, request, context):
        self._unimplemented(context, "TraceSetting", "no tracing; see the Prometheus metrics")

    def LogSettings(self, request, context):
        self._unimplemented(context, "LogSettings", "set --log-level at start-up")
