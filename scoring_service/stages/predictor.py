"""Predict: ONNX Runtime sessions over a model package's graphs.

On the CPU there is one session, over the TreeEnsemble graph. On a GPU there are two: ONNX
Runtime's CUDA provider has no TreeEnsemble kernels, so the package's standard-operator graph
runs on CUDA for large batches, while small ones stay on the CPU TreeEnsemble session, which
answers a handful of rows faster than a kernel launch and two copies over PCIe. The cut-off is
``gpu_min_batch`` rows (``SCORING_GPU_MIN_BATCH``; its default is measured by
``bench/predict_devices.py``, see the README's GPU section).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence

import numpy as np
import onnxruntime as ort

from scoring_service.core import metrics
from scoring_service.core.errors import ModelUnavailable

logger = logging.getLogger(__name__)

CUDA_PROVIDER = "CUDAExecutionProvider"
CPU_PROVIDER = "CPUExecutionProvider"
# Smallest batch sent to the GPU graph: the smallest measured batch where CUDA beats the CPU
# TreeEnsemble by a wide margin (H100 vs one Xeon thread, bench/results/predict_devices.json:
# 64 rows 1.8x, 256 rows 6.8x, 1,024 rows 29x; 1 row 0.04x). See the README's GPU section.
DEFAULT_GPU_MIN_BATCH = 256
# Largest slice of a batch given to the GPU graph in one run: the gemm form holds a few
# float32 [trees, leaves, rows] tensors (~2 GB each at 131,072 rows for 140 trees x 31 leaves).
DEFAULT_GPU_MAX_ROWS = 65_536
# Smallest batch the CPU batch session (several intra-op threads) takes: below it, a single
# thread answers before a thread pool has split the work.
BATCH_SESSION_MIN_ROWS = 1_024

_preload_lock = threading.Lock()
_preloaded = False


class CudaUnavailable(RuntimeError):
    """A CUDA session was asked for but CUDA cannot run it (the message says why)."""


def _preload_cuda_libraries() -> None:
    """Let onnxruntime-gpu find CUDA/cuDNN from the nvidia-* pip wheels (as PyTorch ships them).

    ``onnxruntime.preload_dlls()`` (ORT >= 1.21) loads them before the first CUDA session;
    libraries already on the loader path (system CUDA, or ``import torch``) are used as they are.
    """
    global _preloaded
    with _preload_lock:
        if _preloaded:
            return
        _preloaded = True
        preload = getattr(ort, "preload_dlls", None)
        if preload is None:
            return
        try:
            preload(directory="")
        except Exception:  # the session creation below reports what is really missing
            logger.debug("onnxruntime.preload_dlls() failed", exc_info=True)


def session_options(intra_op_threads: int, *, arena: bool = True) -> ort.SessionOptions:
    """The options every session of the service uses.

    ``arena=False``: the session allocates from the process's heap instead of a memory arena
    (and memory patterns) of its own. The small-batch CPU sessions take it: a call of a few
    rows costs the same either way with one session, but with many sessions (a model family's
    members) each arena keeps its buffers apart, cold in the cache when its session's turn
    comes. Measured on the bench package, one row per call: 66.8 µs against 21.8 µs when 50
    sessions take turns, 13.3 against 11.8 µs when they are drawn from a Zipf law, 10.1 against
    9.5 µs for one session (docs/performance.md).
    """
    options = ort.SessionOptions()
    options.intra_op_num_threads = intra_op_threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if not arena:
        options.enable_cpu_mem_arena = False
        options.enable_mem_pattern = False
    return options


def require_cuda(session: ort.InferenceSession) -> None:
    """Raise CudaUnavailable unless the session really runs on the CUDA provider.

    ONNX Runtime falls back to the CPU with only a log line when CUDA does not initialize
    (no driver, no device, missing CUDA/cuDNN libraries); ``get_providers()`` tells the truth.
    """
    active = session.get_providers()
    if not active or active[0] != CUDA_PROVIDER:
        raise CudaUnavailable(
            "ONNX Runtime offers the CUDA execution provider but the session runs on "
            f"{', '.join(active) or 'nothing'}: CUDA did not initialize (no NVIDIA driver or GPU "
            "visible, or the CUDA 13 / cuDNN 9 libraries onnxruntime-gpu needs are not found; "
            "`pip install onnxruntime-gpu[cuda,cudnn]` installs them)"
        )


def cuda_session(
    graph: bytes, *, device_id: int = 0, intra_op_threads: int = 1
) -> ort.InferenceSession:
    """A session that runs every node of ``graph`` on CUDA, or CudaUnavailable saying why."""
    available = ort.get_available_providers()
    if CUDA_PROVIDER not in available:
        raise CudaUnavailable(
            "ONNX Runtime reports no CUDA execution provider (available: "
            f"{', '.join(available)}); install onnxruntime-gpu (`make setup-gpu`, or "
            "`pip install .[gpu]`) on a machine with an NVIDIA GPU"
        )
    _preload_cuda_libraries()
    options = session_options(intra_op_threads)
    # Refuse rather than silently run part of the graph on the CPU.
    options.add_session_config_entry("session.disable_cpu_ep_fallback", "1")
    try:
        session = ort.InferenceSession(
            graph,
            options,
            # CUDA alone: ORT >= 1.31 refuses the CPU EP listed next to disabled CPU fallback.
            providers=[(CUDA_PROVIDER, {"device_id": str(device_id)})],
        )
    except Exception as exc:
        raise CudaUnavailable(
            f"the CUDA execution provider could not create a session on device {device_id}: "
            f"{str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__}"
        ) from exc
    require_cuda(session)
    return session


class Predictor:
    """ONNX Runtime session(s); ``predict`` returns the positive-class probability per row.

    ``graph`` runs on ``providers`` (default: the CPU). With ``gpu_graph`` (the standard-operator
    graph) a second session runs it on CUDA, and batches of at least ``gpu_min_batch`` rows go
    there, in slices of at most ``gpu_max_rows``. Construction raises CudaUnavailable when that
    session would not really run on CUDA.
    """

    def __init__(
        self,
        graph: bytes,
        n_features: int,
        *,
        providers: list[str] | None = None,
        intra_op_threads: int = 1,
        input_name: str = "features",
        output_name: str = "probabilities",
        gpu_graph: bytes | None = None,
        gpu_input_name: str = "features",
        gpu_output_name: str = "probabilities",
        gpu_min_batch: int = DEFAULT_GPU_MIN_BATCH,
        gpu_max_rows: int = DEFAULT_GPU_MAX_ROWS,
        gpu_device_id: int = 0,
    ) -> None:
        if gpu_min_batch < 1 or gpu_max_rows < 1:
            raise ValueError("gpu_min_batch and gpu_max_rows must be at least 1")
        self.session = ort.InferenceSession(
            graph,
            session_options(intra_op_threads, arena=False),
            providers=providers or [CPU_PROVIDER],
        )
        self._graph = graph
        self.providers_requested = providers or [CPU_PROVIDER]
        self.batch_session: ort.InferenceSession | None = None
        self.batch_min_rows = BATCH_SESSION_MIN_ROWS
        self.n_features = n_features
        self.input_name = input_name
        self.output_names = [output_name]
        self._check_input(self.session)
        self.gpu_session: ort.InferenceSession | None = None
        self.gpu_input_name = gpu_input_name
        self.gpu_output_names = [gpu_output_name]
        self.gpu_min_batch = gpu_min_batch
        self.gpu_max_rows = gpu_max_rows
        if gpu_graph is not None:
            self.gpu_session = cuda_session(
                gpu_graph, device_id=gpu_device_id, intra_op_threads=intra_op_threads
            )
            self._check_input(self.gpu_session)
        # Large batches' providers first: what ops dashboards and the start-up log show.
        self.providers = (
            self.gpu_session.get_providers() if self.gpu_session else self.session.get_providers()
        )
        self.device = "cuda" if self.gpu_session is not None else "cpu"
        self._rows = {graph: metrics.PREDICT_ROWS.labels(graph) for graph in ("cpu", "gpu")}

    def add_batch_session(self, threads: int, min_rows: int = BATCH_SESSION_MIN_ROWS) -> None:
        """A second session over the same graph with ``threads`` intra-op threads, for CPU
        batches of at least ``min_rows`` rows (score-batch): ONNX Runtime splits their rows
        over the threads. Its threads sleep between runs instead of spinning, so an idle pool
        takes no core from the event loop. ``threads`` <= 1 adds none."""
        if threads <= 1:
            return
        options = session_options(threads)
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.batch_session = ort.InferenceSession(
            self._graph, options, providers=self.providers_requested
        )
        self._check_input(self.batch_session)
        self.batch_min_rows = min_rows
        self.batch_session.run(
            self.output_names, {self.input_name: np.zeros((min_rows, self.n_features), np.float32)}
        )

    def _check_input(self, session: ort.InferenceSession) -> None:
        declared = session.get_inputs()[0].shape
        if len(declared) != 2 or (isinstance(declared[1], int) and declared[1] != self.n_features):
            raise ValueError(
                f"graph input has shape {declared}, the manifest lists {self.n_features} features"
            )

    @property
    def graphs(self) -> str:
        """Which graphs serve: ``cpu``, or ``gpu+cpu`` (GPU from gpu_min_batch rows up)."""
        return "gpu+cpu" if self.gpu_session is not None else "cpu"

    def graph_for(self, rows: int) -> str:
        """The graph a batch of ``rows`` rows runs on: ``gpu`` or ``cpu``."""
        if self.gpu_session is not None and rows >= self.gpu_min_batch:
            return "gpu"
        return "cpu"

    def predict(self, features: np.ndarray, counted: dict[str, int] | None = None) -> np.ndarray:
        """Positive-class probability (float64) for each row of a float32 [n, F] matrix.

        The rows are counted in ``scoring_predict_rows_total`` by graph; a caller making several
        calls for one batch (a family's members) passes ``counted`` to add them up there and
        write the metric once (``count_rows``)."""
        graph = self.graph_for(len(features))
        try:
            if graph == "gpu":
                probabilities = self._run_gpu(features)
            else:
                session = self.session
                if self.batch_session is not None and len(features) >= self.batch_min_rows:
                    session = self.batch_session
                (probabilities,) = session.run(self.output_names, {self.input_name: features})
        except Exception as exc:  # ONNX Runtime raises its own untyped errors
            raise ModelUnavailable(
                "The model could not score this request; retry, and alert the on-call team "
                "if it persists."
            ) from exc
        if counted is None:
            self._rows[graph].inc(len(features))
        else:
            counted[graph] = counted.get(graph, 0) + len(features)
        return probabilities[:, 1].astype(np.float64)

    def count_rows(self, counted: dict[str, int]) -> None:
        """Write the rows that ``predict`` calls added up in ``counted``, one write per graph."""
        for graph, rows in counted.items():
            self._rows[graph].inc(rows)

    def _run_gpu(self, features: np.ndarray) -> np.ndarray:
        assert self.gpu_session is not None
        parts = [
            self.gpu_session.run(
                self.gpu_output_names,
                {self.gpu_input_name: features[start : start + self.gpu_max_rows]},
            )[0]
            for start in range(0, len(features), self.gpu_max_rows)
        ]
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def warm_up(self, shapes: Sequence[int] = (1, 8, 64)) -> None:
        """Run each session once per typical shape so the first real call is not slow.

        The GPU session also runs its smallest batch and a larger one: CUDA allocates its
        memory arena and loads kernels on first use. A failure there raises CudaUnavailable.
        """
        for rows in shapes:
            self.session.run(
                self.output_names, {self.input_name: np.zeros((rows, self.n_features), np.float32)}
            )
        if self.gpu_session is not None:
            for rows in sorted({self.gpu_min_batch, min(self.gpu_max_rows, 16_384)}):
                try:
                    self._run_gpu(np.zeros((rows, self.n_features), dtype=np.float32))
                except Exception as exc:  # e.g. out of GPU memory
                    raise CudaUnavailable(
                        f"the GPU graph failed its first run of {rows} rows on CUDA: "
                        f"{str(exc).strip().splitlines()[0] if str(exc).strip() else exc!r}"
                    ) from exc
