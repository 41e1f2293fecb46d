"""Predict: ONNX Runtime sessions over a model package's graphs."""

from __future__ import annotations

import logging

import numpy as np
import onnxruntime as ort

from scoring_service.errors import ModelUnavailable

logger = logging.getLogger(__name__)


class Predictor:
    """One ONNX Runtime session; ``predict`` returns the fraud probability per row."""

    def __init__(
        self,
        graph: bytes,
        n_features: int,
        *,
        providers: list[str] | None = None,
        intra_op_threads: int = 1,
        input_name: str = "features",
        output_name: str = "probabilities",
    ) -> None:
        options = ort.SessionOptions()
        options.intra_op_num_threads = intra_op_threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(
            graph, options, providers=providers or ["CPUExecutionProvider"]
        )
        self.providers = self.session.get_providers()
        self.n_features = n_features
        self.input_name = input_name
        self.output_names = [output_name]
        declared = self.session.get_inputs()[0].shape
        if len(declared) != 2 or (isinstance(declared[1], int) and declared[1] != n_features):
            raise ValueError(
                f"graph input has shape {declared}, the manifest lists {n_features} features"
            )

    def predict(self, features: np.ndarray) -> np.ndarray:
        """Fraud probability (float64) for each row of a float32 [n, F] matrix."""
        try:
            (probabilities,) = self.session.run(self.output_names, {self.input_name: features})
        except Exception as exc:  # ONNX Runtime raises its own untyped errors
            raise ModelUnavailable(
                "The model could not score this request; retry, and alert the on-call team "
                "if it persists."
            ) from exc
        return probabilities[:, 1].astype(np.float64)

    def warm_up(self) -> None:
        """Run the graph once per typical shape so the first real call is not slow."""
        for rows in (1, 8, 64):
            self.predict(np.zeros((rows, self.n_features), dtype=np.float32))
