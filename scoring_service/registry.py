"""Model registry: load a package, prove it fits the live feature store, keep it serving.

A package is refused, with a message naming the mismatch, when its manifest does not parse,
a graph's sha256 differs from the manifest, a graph does not load, or its feature list differs
from the live FeatureService. At start-up a refused package stops the service from starting;
on reload the running version keeps serving.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path

import onnxruntime as ort
from feast import FeatureStore
from pydantic import ValidationError

from models.dataset import feature_layout
from models.package import Manifest, checksums, package_dir, read_manifest, sha256_file
from scoring_service.errors import ModelPackageInvalid
from scoring_service.features import StoreLayout
from scoring_service.labels import LabelPolicy
from scoring_service.predictor import Predictor

logger = logging.getLogger(__name__)

CUDA_PROVIDER = "CUDAExecutionProvider"


@dataclass
class LoadedModel:
    """A verified package with its live session."""

    manifest: Manifest
    path: Path
    layout: StoreLayout
    predictor: Predictor
    policy: LabelPolicy
    device: str
    graph: str

    @property
    def version_label(self) -> str:
        """`name/version`, as reported in every answer."""
        return f"{self.manifest.name}/{self.manifest.version}"


def choose_device(requested: str, manifest: Manifest) -> tuple[str, str, list[str]]:
    """(device, graph key, providers) for a `device` setting of auto, cpu or cuda."""
    cuda_available = CUDA_PROVIDER in ort.get_available_providers()
    has_gpu_graph = "gpu" in manifest.graphs
    if requested == "cuda":
        if not cuda_available:
            raise ModelPackageInvalid(
                "device=cuda was requested but ONNX Runtime reports no CUDA execution provider "
                f"(available: {', '.join(ort.get_available_providers())}); install the gpu "
                "extra (onnxruntime-gpu) on a machine with a GPU, or set SCORING_DEVICE=auto."
            )
        if not has_gpu_graph:
            raise ModelPackageInvalid(
                f"device=cuda was requested but package {manifest.name}/{manifest.version} "
                "has no GPU graph; retrain to add one, or set SCORING_DEVICE=auto."
            )
    if requested in ("cuda", "auto") and cuda_available and has_gpu_graph:
        return "cuda", "gpu", [CUDA_PROVIDER, "CPUExecutionProvider"]
    return "cpu", "cpu", ["CPUExecutionProvider"]


def verify_against_store(manifest: Manifest, store: FeatureStore) -> StoreLayout:
    """The live FeatureService must list exactly the manifest's views, keys and features."""
    try:
        live = feature_layout(store, manifest.feature_service)
    except Exception as exc:
        raise ModelPackageInvalid(
            f"feature service {manifest.feature_service!r} of package "
            f"{manifest.name}/{manifest.version} is not in the live feature store; run "
            "`feast apply` with the repository the model was trained on."
        ) from exc
    expected = {
        view: (info.join_key, info.features) for view, info in manifest.feature_views.items()
    }
    actual = {view: (key, feats) for view, (key, _, feats) in live.views.items()}
    if expected != actual:
        problems = []
        for view in sorted(set(expected) | set(actual)):
            if view not in actual:
                problems.append(f"view {view} is gone from the live service")
            elif view not in expected:
                problems.append(f"live service has extra view {view}")
            elif expected[view] != actual[view]:
                exp_key, exp_feats = expected[view]
                act_key, act_feats = actual[view]
                if exp_key != act_key:
                    problems.append(f"{view}: join key {exp_key} in package, {act_key} live")
                missing = [f for f in exp_feats if f not in act_feats]
                extra = [f for f in act_feats if f not in exp_feats]
                if missing:
                    problems.append(f"{view}: live service lacks {missing}")
                if extra:
                    problems.append(f"{view}: live service adds {extra}")
                if not missing and not extra:
                    problems.append(f"{view}: features are in another order")
        raise ModelPackageInvalid(
            f"package {manifest.name}/{manifest.version} does not match live feature service "
            f"{manifest.feature_service}: " + "; ".join(problems)
        )
    ttls = {view: info.ttl_seconds for view, info in manifest.feature_views.items()}
    return StoreLayout.from_views(
        {view: (key, ttls[view], feats) for view, (key, _, feats) in live.views.items()}
    )


def load_package(
    path: Path, store: FeatureStore, *, device: str = "auto", intra_op_threads: int = 1
) -> LoadedModel:
    """Read, verify and open a package; raises ModelPackageInvalid naming what is wrong."""
    path = Path(path)
    try:
        manifest = read_manifest(path)
    except FileNotFoundError as exc:
        raise ModelPackageInvalid(
            f"no model package at {path}; train one with `make train`."
        ) from exc
    except (ValidationError, ValueError) as exc:
        raise ModelPackageInvalid(f"manifest of {path} is invalid: {exc}") from exc
    for file_name, expected in checksums(manifest).items():
        file = path / file_name
        if not file.is_file():
            raise ModelPackageInvalid(f"{file_name} is missing from package {path}")
        actual = sha256_file(file)
        if actual != expected:
            raise ModelPackageInvalid(
                f"checksum mismatch for {file_name}: manifest says {expected[:12]}..., "
                f"file is {actual[:12]}...; the package is damaged"
            )
    layout = verify_against_store(manifest, store)
    device_name, graph_key, providers = choose_device(device, manifest)
    graph = manifest.graphs[graph_key]
    try:
        predictor = Predictor(
            (path / graph.file).read_bytes(),
            len(manifest.features),
            providers=providers,
            intra_op_threads=intra_op_threads,
            input_name=graph.input_name,
            output_name=graph.output_name,
        )
        predictor.warm_up()
    except Exception as exc:
        raise ModelPackageInvalid(
            f"graph {graph_key} ({graph.file}) of {manifest.name}/{manifest.version} does not "
            "load in ONNX Runtime; the file is corrupt or was built for another runtime"
        ) from exc
    logger.info(
        "loaded model %s/%s from %s on %s (graph %s, providers %s)",
        manifest.name,
        manifest.version,
        path,
        device_name,
        graph.file,
        predictor.providers,
    )
    return LoadedModel(
        manifest=manifest,
        path=path,
        layout=layout,
        predictor=predictor,
        policy=LabelPolicy(manifest.label_thresholds, manifest.uncertain_policy, manifest.features),
        device=device_name,
        graph=graph_key,
    )


class ModelRegistry:
    """Holds the live model; a failed reload leaves it in place."""

    def __init__(
        self, root: Path, store: FeatureStore, *, device: str = "auto", intra_op_threads: int = 1
    ) -> None:
        self.root = Path(root)
        self.store = store
        self.device = device
        self.intra_op_threads = intra_op_threads
        self._lock = threading.Lock()
        self._current: LoadedModel | None = None

    @property
    def current(self) -> LoadedModel | None:
        """The model now serving, if any."""
        return self._current

    def load(self, name: str, version: str) -> LoadedModel:
        """Load and swap in a version; on failure the previous one keeps serving."""
        loaded = load_package(
            package_dir(self.root, name, version),
            self.store,
            device=self.device,
            intra_op_threads=self.intra_op_threads,
        )
        with self._lock:
            self._current = loaded
        return loaded
