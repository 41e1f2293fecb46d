"""Model registry: load a package, prove it fits the live feature store, keep it serving.

A package is refused, with a message naming the mismatch, when its manifest does not parse,
a graph's sha256 differs from the manifest, a graph does not load, or its feature list differs
from the live FeatureService. At start-up a refused package stops the service from starting;
on reload the running version keeps serving.

Each file of a package is read and hashed once per load: the digests the seal is recomputed
from are the ones the manifest's checksums are checked against. A file that has not changed
since an earlier load is not hashed again (``FileDigests``, process-wide); the seal itself is
recomputed from the files' digests and checked, with the signature, on every load.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import onnxruntime as ort
from feast import FeatureStore
from pydantic import ValidationError

from feature_repo.domain import DOMAIN_FILE, DomainSpec, DomainSpecError, load_domain
from feature_repo.layout import ViewSpec, feature_layout
from models.package import (
    MANIFEST_FILE,
    Manifest,
    PackageIntegrityError,
    checksums,
    package_dir,
    sha256_bytes,
    sha256_file,
    verify_package,
)
from scoring_service.core import metrics
from scoring_service.core.errors import ModelPackageInvalid
from scoring_service.stages.features import StoreLayout
from scoring_service.stages.labels import LabelPolicy
from scoring_service.stages.on_demand import OnDemandFeatures, for_manifest, on_demand_problems
from scoring_service.stages.predictor import (
    CPU_PROVIDER,
    CUDA_PROVIDER,
    DEFAULT_GPU_MIN_BATCH,
    CudaUnavailable,
    Predictor,
)

logger = logging.getLogger(__name__)


# A digest is remembered only for a file whose last change (ctime) is this much older than the
# moment it was hashed: a change within the file system's timestamp granularity (up to 2 s on
# some file systems) could otherwise leave the stat key as it was.
SETTLED_NS = 2_000_000_000
FILE_DIGESTS_KEPT = 8192
MANIFESTS_KEPT = 512

StatKey = tuple[str, int, int, int, int, int]


def stat_key(file: Path, st: os.stat_result) -> StatKey:
    """What identifies a file's content without reading it: path, device, inode, size, mtime
    and ctime (nanoseconds)."""
    return (str(file), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


class FileDigests:
    """sha256 of files, remembered by their stat key (``stat_key``) so that a file unchanged since
    it was hashed is not read again.

    Why an unchanged key means unchanged content: the kernel sets a file's ctime to the current
    time on every change to it, its content (write, truncate), its inode (chmod, link, utime),
    and no user tool can set it back; a file replaced (rename, copy over a deleted one) is another
    inode, with its own ctime. So any change after a file was hashed moves its key, provided the
    change lands on a later timestamp than the one remembered: a digest is kept only for a file
    whose ctime was at least ``settled_ns`` old when it was hashed, and unchanged while it was
    read. The key is what the file system reports: a file changed through a writable shared
    memory map may keep its times until the page is written back, and a clock set backwards
    could repeat a ctime; package folders are written by ``write_package`` (a new folder moved
    into place), never in place.
    """

    def __init__(self, settled_ns: int = SETTLED_NS, kept: int = FILE_DIGESTS_KEPT) -> None:
        self.settled_ns = settled_ns
        self.kept = kept
        self.hashed = 0  # files read and hashed (the others were answered from memory)
        self._lock = threading.Lock()
        self._digests: OrderedDict[StatKey, str] = OrderedDict()

    def sha256(self, file: Path) -> str:
        """The file's sha256: remembered while its stat key holds, otherwise read and hashed."""
        file = Path(file).absolute()
        key = stat_key(file, file.stat())
        with self._lock:
            digest = self._digests.get(key)
            if digest is not None:
                self._digests.move_to_end(key)
                return digest
        digest = sha256_file(file)
        after = file.stat()
        settled = time.time_ns() - after.st_ctime_ns >= self.settled_ns
        with self._lock:
            self.hashed += 1
            if settled and stat_key(file, after) == key:
                self._digests[key] = digest
                while len(self._digests) > self.kept:
                    self._digests.popitem(last=False)
        return digest


# The process's file digests, shared by every load (a family's members reload after eviction).
FILE_DIGESTS = FileDigests()
# Parsed manifests by their sha256 (the digest the seal was just verified with): a manifest's
# bytes name its parse exactly, so a reload does not validate the same manifest again. The loads
# of one manifest share its parse (the service reads manifests, never assigns to them).
_MANIFESTS: OrderedDict[str, Manifest] = OrderedDict()
_MANIFESTS_LOCK = threading.Lock()


def parsed_manifest(path: Path, digest: str) -> Manifest:
    """The package's manifest whose sha256 is ``digest`` (verified by the seal): parsed once per
    content; ModelPackageInvalid when the file no longer has that digest or does not parse."""
    with _MANIFESTS_LOCK:
        manifest = _MANIFESTS.get(digest)
        if manifest is not None:
            _MANIFESTS.move_to_end(digest)
            return manifest
    try:
        payload = (path / MANIFEST_FILE).read_bytes()
    except FileNotFoundError as exc:
        raise ModelPackageInvalid(
            f"no model package at {path}; train one with `make train`"
        ) from exc
    if sha256_bytes(payload) != digest:
        raise ModelPackageInvalid(
            f"the manifest of package {path} changed while it was loaded; load it again"
        )
    try:
        manifest = Manifest.model_validate(json.loads(payload))
    except (ValidationError, ValueError) as exc:
        raise ModelPackageInvalid(f"manifest of {path} is invalid: {exc}") from exc
    with _MANIFESTS_LOCK:
        _MANIFESTS[digest] = manifest
        while len(_MANIFESTS) > MANIFESTS_KEPT:
            _MANIFESTS.popitem(last=False)
    return manifest


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
    # The on-demand block of the model input (empty for models without on-demand views).
    on_demand: OnDemandFeatures = field(default_factory=lambda: OnDemandFeatures({}, []))

    @property
    def version_label(self) -> str:
        """`name/version`, as reported in every answer."""
        return f"{self.manifest.name}/{self.manifest.version}"


def choose_device(requested: str, manifest: Manifest) -> tuple[str, str, list[str]]:
    """(device, graph key, providers) for a `device` setting of auto, cpu or cuda.

    This is the plan; the Predictor then proves CUDA really initializes (``load_package``
    refuses ``cuda`` and falls back to the CPU for ``auto`` when it does not).
    """
    cuda_available = CUDA_PROVIDER in ort.get_available_providers()
    has_gpu_graph = "gpu" in manifest.graphs
    if requested == "cuda":
        if not cuda_available:
            raise ModelPackageInvalid(
                "device=cuda was requested, but ONNX Runtime reports no CUDA execution provider "
                f"(available: {', '.join(ort.get_available_providers())}); install the gpu "
                "extra (onnxruntime-gpu) on a machine with a GPU, or set SCORING_DEVICE=auto"
            )
        if not has_gpu_graph:
            raise ModelPackageInvalid(
                f"device=cuda was requested, but package {manifest.name}/{manifest.version} "
                "has no GPU graph; retrain to add one, or set SCORING_DEVICE=auto"
            )
    if requested in ("cuda", "auto") and cuda_available and has_gpu_graph:
        return "cuda", "gpu", [CUDA_PROVIDER, CPU_PROVIDER]
    return "cpu", "cpu", [CPU_PROVIDER]


def verify_against_store(manifest: Manifest, store: FeatureStore) -> StoreLayout:
    """The live FeatureService must list exactly the manifest's views, keys and features."""
    try:
        live = feature_layout(store, manifest.feature_service)
    except Exception as exc:
        raise ModelPackageInvalid(
            f"feature service {manifest.feature_service!r} of package "
            f"{manifest.name}/{manifest.version} is not in the live feature store; run "
            "`feast apply` with the repository the model was trained on"
        ) from exc
    expected = {
        view: (info.join_key, info.features) for view, info in manifest.feature_views.items()
    }
    actual = {view: (spec.join_key, spec.features) for view, spec in live.views.items()}
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
    problems = on_demand_problems(manifest, live.on_demand)
    if problems:
        raise ModelPackageInvalid(
            f"package {manifest.name}/{manifest.version} does not match live feature service "
            f"{manifest.feature_service}: " + "; ".join(problems)
        )
    # TTLs and evidence as trained: the model learnt with rows withheld past these TTLs.
    return StoreLayout.from_views(
        {
            view: ViewSpec(info.join_key, info.ttl_seconds, info.features, info.evidence)
            for view, info in manifest.feature_views.items()
        }
    )


def domain_of(store: FeatureStore) -> DomainSpec | None:
    """The domain declared next to the store's Feast repository (its domain.yaml), if any."""
    folder = Path(store.repo_path)
    if not (folder / DOMAIN_FILE).is_file():
        return None
    try:
        return load_domain(folder)
    except DomainSpecError as exc:
        raise ModelPackageInvalid(str(exc)) from exc


def same_inputs(manifest: Manifest, other: Manifest) -> bool:
    """Whether two packages read the same inputs the same way from the store and the request."""
    return (
        manifest.domain == other.domain
        and manifest.feature_service == other.feature_service
        and manifest.features == other.features
        and manifest.feature_views == other.feature_views
        and manifest.on_demand_views == other.on_demand_views
        and manifest.request_features == other.request_features
        and manifest.entity_mapping == other.entity_mapping
    )


def load_package(
    path: Path,
    store: FeatureStore,
    *,
    device: str = "auto",
    intra_op_threads: int = 1,
    gpu_min_batch: int = DEFAULT_GPU_MIN_BATCH,
    gpu_device_id: int = 0,
    signing_key: bytes | None = None,
    checked: LoadedModel | None = None,
) -> LoadedModel:
    """Read, verify and open a package; raises ModelPackageInvalid naming what is wrong.

    The package's seal (one digest over every file, manifest included) is checked first, and its
    signature when ``signing_key`` is given, so an edited manifest never loads.

    ``checked``: a package already loaded against this store; a package reading the same inputs
    (``same_inputs``) takes its layout instead of repeating the store and domain checks (a
    family's members, loaded on demand beside their default).

    On CUDA the predictor holds two sessions: the GPU graph for batches of at least
    ``gpu_min_batch`` rows and the CPU graph for smaller ones. ``device="cuda"`` is refused when
    CUDA does not really initialize; ``auto`` then serves from the CPU graph.
    """
    path = Path(path)
    if not (path / MANIFEST_FILE).is_file():
        raise ModelPackageInvalid(f"no model package at {path}; train one with `make train`")
    sealed: dict[Path, str] = {}  # each file's digest, as the seal was recomputed from it

    def hash_file(file: Path) -> str:
        sealed[file] = FILE_DIGESTS.sha256(file)
        return sealed[file]

    try:
        verify_package(path, signing_key, hash_file=hash_file)
    except PackageIntegrityError as exc:
        raise ModelPackageInvalid(str(exc)) from exc
    # The manifest as sealed (gone from the folder since: no digest, refused as changed).
    manifest = parsed_manifest(path, sealed.get(path / MANIFEST_FILE, ""))
    for file_name, expected in checksums(manifest).items():
        file = path / file_name
        if not file.is_file():
            raise ModelPackageInvalid(f"{file_name} is missing from package {path}")
        actual = sealed.get(file) or sha256_file(file)
        if actual != expected:
            raise ModelPackageInvalid(
                f"checksum mismatch for {file_name}: manifest says {expected[:12]}..., "
                f"file is {actual[:12]}...; the package is damaged"
            )
    if checked is not None and same_inputs(manifest, checked.manifest):
        # Read exactly as a package already checked against this store (a family's member and
        # its default): the store and domain checks would repeat that package's.
        layout = checked.layout
        # The same inputs, the same red flags: the checked package's policy, this one's labels.
        policy = dataclasses.replace(
            checked.policy,
            thresholds=manifest.label_thresholds,
            uncertain=manifest.uncertain_policy,
            labels=list(manifest.labels),
            uncertain_label=manifest.uncertain_label,
        )
    else:
        layout = verify_against_store(manifest, store)
        domain = domain_of(store)
        if domain is not None and domain.name != manifest.domain:
            raise ModelPackageInvalid(
                f"package {manifest.name}/{manifest.version} serves domain {manifest.domain!r}, "
                f"but the feature repository {store.repo_path} is domain {domain.name!r}"
            )
        policy = LabelPolicy.for_package(manifest, domain)
    device_name, _, _ = choose_device(device, manifest)
    cpu_graph = manifest.graphs["cpu"]
    gpu_graph = manifest.graphs["gpu"] if device_name == "cuda" else None
    label = f"{manifest.name}/{manifest.version}"
    try:
        cpu_bytes = (path / cpu_graph.file).read_bytes()
        gpu_bytes = (path / gpu_graph.file).read_bytes() if gpu_graph else None
    except OSError as exc:
        raise ModelPackageInvalid(f"graphs of {label} cannot be read: {exc}") from exc

    def open_predictor(with_gpu: bool) -> Predictor:
        files = cpu_graph.file + (f" / {gpu_graph.file}" if with_gpu and gpu_graph else "")
        try:
            predictor = Predictor(
                cpu_bytes,
                len(manifest.features),
                providers=[CPU_PROVIDER],
                intra_op_threads=intra_op_threads,
                input_name=cpu_graph.input_name,
                output_name=cpu_graph.output_name,
                gpu_graph=gpu_bytes if with_gpu else None,
                gpu_input_name=gpu_graph.input_name if gpu_graph else "features",
                gpu_output_name=gpu_graph.output_name if gpu_graph else "probabilities",
                gpu_min_batch=gpu_min_batch,
                gpu_device_id=gpu_device_id,
            )
            predictor.warm_up()
        except CudaUnavailable:
            raise
        except Exception as exc:
            raise ModelPackageInvalid(
                f"graph {files} of {label} does not load in ONNX Runtime; the file is corrupt "
                "or was built for another runtime"
            ) from exc
        return predictor

    try:
        predictor = open_predictor(with_gpu=gpu_bytes is not None)
    except CudaUnavailable as exc:
        if device == "cuda":
            raise ModelPackageInvalid(
                f"device=cuda was requested, but CUDA is not usable: {exc}; fix the GPU setup, "
                "or set SCORING_DEVICE=auto (or cpu) to serve from the CPU graph"
            ) from exc
        logger.warning("device=auto: CUDA is not usable (%s); predicting on the CPU", exc)
        predictor = open_predictor(with_gpu=False)
    device_name = predictor.device
    logger.info(
        "loaded model %s from %s on %s: graphs %s (%s), providers %s",
        label,
        path,
        device_name,
        predictor.graphs,
        f"{gpu_graph.file if gpu_graph else ''} on CUDA device {gpu_device_id} for batches >= "
        f"{gpu_min_batch} rows, {cpu_graph.file} on the CPU below"
        if device_name == "cuda"
        else f"{cpu_graph.file} on the CPU",
        predictor.providers,
    )
    return LoadedModel(
        manifest=manifest,
        path=path,
        layout=layout,
        predictor=predictor,
        policy=policy,
        device=device_name,
        graph=predictor.graphs,
        on_demand=for_manifest(manifest),
    )


class ModelRegistry:
    """Holds the live model; a failed reload leaves it in place."""

    def __init__(
        self,
        root: Path,
        store: FeatureStore,
        *,
        device: str = "auto",
        intra_op_threads: int = 1,
        gpu_min_batch: int = DEFAULT_GPU_MIN_BATCH,
        gpu_device_id: int = 0,
        signing_key: bytes | None = None,
    ) -> None:
        self.root = Path(root)
        self.signing_key = signing_key
        self.store = store
        self.device = device
        self.intra_op_threads = intra_op_threads
        self.gpu_min_batch = gpu_min_batch
        self.gpu_device_id = gpu_device_id
        self._lock = threading.Lock()
        self._reload_lock = threading.Lock()
        self._current: LoadedModel | None = None
        self._info_labels: tuple[str, str, str, str] | None = None

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
            gpu_min_batch=self.gpu_min_batch,
            gpu_device_id=self.gpu_device_id,
            signing_key=self.signing_key,
        )
        info = (
            loaded.version_label,
            loaded.device,
            loaded.graph,
            str(loaded.predictor.gpu_min_batch if loaded.device == "cuda" else 0),
        )
        with self._lock:
            self._current = loaded
            # 1 for what serves now, 0 for what it replaced (clear() is unavailable in
            # prometheus_client's multi-process mode, which Feast switches on).
            if self._info_labels is not None and self._info_labels != info:
                metrics.MODEL_INFO.labels(*self._info_labels).set(0)
            metrics.MODEL_INFO.labels(*info).set(1)
            self._info_labels = info
        return loaded

    def reload(self, name: str, version: str) -> LoadedModel:
        """Verify a version against the live feature store as it is now, then swap it in.

        The feature registry is re-read first, so a FeatureService changed since start-up is
        compared as it is. On any refusal (ModelPackageInvalid, naming the mismatch) the
        running version keeps serving. One reload at a time.
        """
        with self._reload_lock:
            self.store.refresh_registry()
            previous = self._current
            try:
                return self.load(name, version)
            except ModelPackageInvalid as exc:
                logger.warning(
                    "reload of %s/%s refused, %s keeps serving: %s",
                    name,
                    version,
                    previous.version_label if previous else "nothing",
                    exc.message,
                )
                raise
