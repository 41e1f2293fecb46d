"""Versioned model packages: the ONNX graph(s) plus a manifest that says how to serve them.

The package format is the one contract between training and serving, and the one part of
``models/`` the scoring service may import (an import-linter contract). It imports numpy and
pydantic only: the serving image installs no training library. Its modules:

- ``manifest``: the manifest schema, the package folder layout, reading a manifest;
- ``seal``: artefact checksums, the seal over the whole package and its signature, atomic writes;
- ``baselines``: the training distributions of the inputs and the scores, and PSI against them;
- ``segments``: a model family's segment keys, the same in training and serving.

Everything public is re-exported here: ``from models.package import ...`` is how the service and
training read the format.
"""

from models.package.baselines import (
    BASELINE_QUANTILES,
    PSI_EPSILON,
    SCORE_EDGE_TOLERANCE,
    SCORE_QUANTILES,
    bin_counts,
    feature_baseline,
    psi,
    score_baseline,
    score_bins,
    score_reference,
)
from models.package.manifest import (
    MANIFEST_FILE,
    SCHEMA_VERSION,
    FeatureBaseline,
    FeatureViewInfo,
    GraphInfo,
    LabelThresholds,
    Manifest,
    OnDemandViewInfo,
    UncertainPolicy,
    package_dir,
    read_manifest,
)
from models.package.seal import (
    DIGEST_FILE,
    SIGNATURE_FILE,
    SIGNING_KEY_ENV,
    PackageIntegrityError,
    checksums,
    package_digest,
    seal_package,
    sha256_bytes,
    sha256_file,
    sign_digest,
    verify_package,
    write_package,
)
from models.package.segments import segment_key

__all__ = [
    "BASELINE_QUANTILES",
    "DIGEST_FILE",
    "MANIFEST_FILE",
    "PSI_EPSILON",
    "SCHEMA_VERSION",
    "SCORE_EDGE_TOLERANCE",
    "SCORE_QUANTILES",
    "SIGNATURE_FILE",
    "SIGNING_KEY_ENV",
    "FeatureBaseline",
    "FeatureViewInfo",
    "GraphInfo",
    "LabelThresholds",
    "Manifest",
    "OnDemandViewInfo",
    "PackageIntegrityError",
    "UncertainPolicy",
    "bin_counts",
    "checksums",
    "feature_baseline",
    "package_digest",
    "package_dir",
    "psi",
    "read_manifest",
    "score_baseline",
    "score_bins",
    "score_reference",
    "seal_package",
    "segment_key",
    "sha256_bytes",
    "sha256_file",
    "sign_digest",
    "verify_package",
    "write_package",
]
