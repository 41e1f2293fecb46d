"""Where predictions run: the CPU graph, the GPU graph on CUDA, and the batch-size routing.

Without a usable GPU (CI) the service must serve from the CPU graph on ``device=auto`` and refuse
to start on ``device=cuda``; the GPU tests skip with the reason. On a GPU machine with
onnxruntime-gpu the same file proves the CUDA session really runs on CUDA and matches the CPU
graph.
"""

from __future__ import annotations

import functools

import lightgbm as lgb
import numpy as np
import onnxruntime as ort
import pytest

from models import export
from scoring_service.core import metrics
from scoring_service.stages.predictor import (
    CPU_PROVIDER,
    CUDA_PROVIDER,
    CudaUnavailable,
    Predictor,
    cuda_session,
    require_cuda,
)

N_FEATURES = 8


@pytest.fixture(scope="module")
def graphs() -> tuple[bytes, bytes]:
    """(TreeEnsemble graph, standard-operator graph) of a small LightGBM model."""
    rng = np.random.default_rng(5)
    x = rng.normal(size=(3000, N_FEATURES))
    x[rng.random(x.shape) < 0.1] = np.nan
    y = (np.nan_to_num(x[:, 0]) + np.nan_to_num(x[:, 1]) + rng.normal(size=3000) > 1).astype(int)
    params = {"objective": "binary", "num_leaves": 15, "verbose": -1, "num_threads": 1}
    booster = lgb.train(params, lgb.Dataset(x, y), 40)
    return (
        export.tree_ensemble_graph(booster, N_FEATURES).SerializeToString(),
        export.standard_ops_graph(booster).SerializeToString(),
    )


@functools.cache
def cuda_unusable_reason() -> str | None:
    """None when a CUDA session really runs here, else why not."""
    if CUDA_PROVIDER not in ort.get_available_providers():
        return "onnxruntime has no CUDA execution provider (CPU build; `make setup-gpu`)"
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Neg", ["x"], ["y"])],
        "probe",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    try:
        cuda_session(model.SerializeToString())
    except CudaUnavailable as exc:
        return f"CUDA is not usable: {exc}"
    return None


def rows(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, N_FEATURES)).astype(np.float32)
    x[rng.random(x.shape) < 0.1] = np.nan
    return x


def predicted_rows(graph: str) -> float:
    return metrics.PREDICT_ROWS.labels(graph)._value.get()


# --------------------------------------------------------------------------------------------
# Without a GPU (always runs)


def test_cpu_predictor_serves_the_tree_ensemble(graphs: tuple[bytes, bytes]) -> None:
    predictor = Predictor(graphs[0], N_FEATURES)
    assert predictor.device == "cpu" and predictor.graphs == "cpu"
    assert predictor.providers == [CPU_PROVIDER]
    assert predictor.graph_for(1_000_000) == "cpu"
    before = predicted_rows("cpu")
    scores = predictor.predict(rows(100))
    assert scores.shape == (100,) and scores.dtype == np.float64
    assert predicted_rows("cpu") - before == 100


def test_batches_route_by_size(graphs: tuple[bytes, bytes]) -> None:
    """Small batches take the CPU graph, large ones the GPU session in slices; same scores.

    The GPU session is swapped for a CPU session over the same standard-operator graph, so the
    routing is tested where no GPU exists.
    """
    predictor = Predictor(graphs[0], N_FEATURES, gpu_min_batch=64, gpu_max_rows=100)
    predictor.gpu_session = ort.InferenceSession(graphs[1], providers=[CPU_PROVIDER])
    assert [predictor.graph_for(n) for n in (1, 63, 64, 10_000)] == ["cpu", "cpu", "gpu", "gpu"]
    x = rows(1000, seed=1)
    cpu_before, gpu_before = predicted_rows("cpu"), predicted_rows("gpu")
    small = predictor.predict(x[:63])
    large = predictor.predict(x)  # ten slices of 100 rows
    assert predicted_rows("cpu") - cpu_before == 63
    assert predicted_rows("gpu") - gpu_before == 1000
    reference = Predictor(graphs[0], N_FEATURES).predict(x)
    np.testing.assert_allclose(large, reference, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(small, reference[:63])


def test_routing_limits_are_validated(graphs: tuple[bytes, bytes]) -> None:
    with pytest.raises(ValueError, match="at least 1"):
        Predictor(graphs[0], N_FEATURES, gpu_min_batch=0)


def test_silent_cpu_fallback_is_detected(graphs: tuple[bytes, bytes]) -> None:
    """A session asked for CUDA that ends up on the CPU must not pass for a GPU session."""
    session = ort.InferenceSession(graphs[1], providers=[CPU_PROVIDER])
    with pytest.raises(CudaUnavailable, match="CUDA did not initialize"):
        require_cuda(session)


def test_cuda_session_refused_without_provider(graphs: tuple[bytes, bytes]) -> None:
    if CUDA_PROVIDER in ort.get_available_providers():
        pytest.skip("this onnxruntime has the CUDA provider")
    with pytest.raises(CudaUnavailable, match="no CUDA execution provider"):
        cuda_session(graphs[1])
    with pytest.raises(CudaUnavailable):
        Predictor(graphs[0], N_FEATURES, gpu_graph=graphs[1])


# --------------------------------------------------------------------------------------------
# Through the app's lifespan, on the SQLite fixtures


def test_auto_serves_the_cpu_graph_without_gpu(sqlite_repo, model_root) -> None:
    if cuda_unusable_reason() is None:
        pytest.skip("CUDA is usable here: auto picks it (see test_app_on_cuda)")
    from fastapi.testclient import TestClient

    from scoring_service.api.app import create_app
    from tests.fixtures.service import API_HEADERS, settings_for

    settings = settings_for(sqlite_repo, model_root, device="auto")
    with TestClient(create_app(settings), headers=API_HEADERS) as client:
        body = client.get("/health/ready").json()
        assert (body["device"], body["graph"]) == ("cpu", "cpu")
        text = client.get("/metrics").text
    assert (
        'scoring_model_info{device="cpu",gpu_min_batch="0",graph="cpu",'
        'model_version="fraud_model/v1"} 1.0'
    ) in text


def test_cuda_refuses_to_start_without_gpu(sqlite_repo, model_root, caplog) -> None:
    reason = cuda_unusable_reason()
    if reason is None:
        pytest.skip("CUDA is usable here: device=cuda starts (see test_app_on_cuda)")
    from fastapi.testclient import TestClient

    from scoring_service.api.app import create_app
    from scoring_service.core.errors import ModelPackageInvalid
    from tests.fixtures.service import API_HEADERS, settings_for

    settings = settings_for(sqlite_repo, model_root, device="cuda")
    app = create_app(settings)
    with (
        pytest.raises(ModelPackageInvalid, match="device=cuda was requested") as refused,
        TestClient(app, headers=API_HEADERS),
    ):
        pytest.fail("the service started on device=cuda without a usable GPU")
    message = refused.value.message
    assert "CUDA" in message and "SCORING_DEVICE=auto" in message


# --------------------------------------------------------------------------------------------
# On a GPU (skipped with the reason elsewhere)


@pytest.fixture()
def cuda() -> None:
    reason = cuda_unusable_reason()
    if reason is not None:
        pytest.skip(reason)


@pytest.mark.gpu
def test_cuda_predictor_matches_cpu_graph(cuda: None, graphs: tuple[bytes, bytes]) -> None:
    predictor = Predictor(
        graphs[0], N_FEATURES, gpu_graph=graphs[1], gpu_min_batch=256, gpu_max_rows=4096
    )
    predictor.warm_up()
    assert predictor.device == "cuda" and predictor.graphs == "gpu+cpu"
    assert predictor.providers[0] == CUDA_PROVIDER
    assert predictor.gpu_session is not None
    assert predictor.gpu_session.get_providers()[0] == CUDA_PROVIDER
    x = rows(10_000, seed=2)
    x[:50] = 0.0
    gpu_before = predicted_rows("gpu")
    on_gpu = predictor.predict(x)  # three slices on CUDA
    assert predicted_rows("gpu") - gpu_before == 10_000
    reference = Predictor(graphs[0], N_FEATURES).predict(x)
    assert float(np.max(np.abs(on_gpu - reference))) <= 1e-5
    np.testing.assert_array_equal(predictor.predict(x[:10]), reference[:10])  # CPU graph


@pytest.mark.gpu
def test_app_on_cuda(cuda: None, sqlite_repo, model_root) -> None:
    from fastapi.testclient import TestClient

    from scoring_service.api.app import create_app
    from tests.fixtures.service import API_HEADERS, settings_for

    for device in ("cuda", "auto"):
        settings = settings_for(sqlite_repo, model_root, device=device, gpu_min_batch=32)
        with TestClient(create_app(settings), headers=API_HEADERS) as client:
            body = client.get("/health/ready").json()
            assert (body["device"], body["graph"]) == ("cuda", "gpu+cpu")
