"""The domains a process serves: resolved from the settings, opened and closed one way.

``served_domains`` is checked rule by rule on the shipped domain folders (payments and loan
applications) and on domain files written here; ``open_domain`` and ``close_domain`` run on the
session's SQLite feature store and model package, and on a deployment file of that package and
a sealed copy of it.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pandas as pd
import pytest
import yaml

from scoring_service.core.errors import ConfigurationInvalid, DeploymentRefused, NotReady
from scoring_service.core.settings import Settings
from scoring_service.monitoring.answers import AnswerLog
from scoring_service.served import close_domain, open_domain, served_domains
from scoring_service.stages.mapping import map_records
from tests.conftest import ROOT
from tests.fixtures.service import FRAUD_API, as_request, copy_package, settings_for

FRAUD = ROOT / "feature_repo" / "fraud"
CREDIT = ROOT / "feature_repo" / "credit"


def test_one_domain_by_default_and_nothing_opened() -> None:
    (domain,) = served_domains(Settings(feature_repo=FRAUD))
    assert (domain.name, domain.folder, domain.yaml) == ("fraud", FRAUD, None)
    assert (domain.model_name, domain.model_version) == ("fraud_model", "v1")
    assert domain.primary and domain.deployment_file is None
    assert domain.scorer is None and domain.deployments is None and domain.registry is None


def test_each_domain_gets_its_store_file_its_package_and_the_primary_its_deployment(
    tmp_path: Path,
) -> None:
    explicit = tmp_path / "feature_store.elsewhere.yaml"
    settings = Settings(
        domains=(FRAUD, CREDIT),
        feature_store_yaml=explicit,
        feature_store_variant="redis",
        model_name="fraud_model_next",
        model_version="v3",
        deployment=tmp_path / "deployment.yaml",
    )
    fraud, credit = served_domains(settings)
    assert (fraud.name, credit.name) == ("fraud", "credit")
    assert fraud.primary and not credit.primary
    # The first domain's explicit yaml wins; the others follow the variant's convention.
    assert fraud.yaml == explicit
    assert credit.yaml == CREDIT / "feature_store.redis.yaml"
    # SCORING_MODEL_NAME names the first domain's model; another serves its own at the version.
    assert (fraud.model_name, fraud.model_version) == ("fraud_model_next", "v3")
    assert (credit.model_name, credit.model_version) == ("credit_model", "v3")
    assert fraud.deployment_file == tmp_path / "deployment.yaml"
    assert credit.deployment_file is None


def test_models_name_each_domains_package_in_order() -> None:
    fraud, credit = served_domains(
        Settings(domains=(FRAUD, CREDIT), models=("fraud_model/v2",), model_version="v5")
    )
    assert (fraud.model_name, fraud.model_version) == ("fraud_model", "v2")
    assert (credit.model_name, credit.model_version) == ("credit_model", "v5")
    _, credit = served_domains(
        Settings(domains=(FRAUD, CREDIT), models=("fraud_model/v2", "credit_model/v7"))
    )
    assert (credit.model_name, credit.model_version) == ("credit_model", "v7")
    # Without a variant, a domain other than the first reads its folder's own yaml.
    _, credit = served_domains(
        Settings(domains=(FRAUD, CREDIT), feature_store_yaml=FRAUD / "feature_store.redis.yaml")
    )
    assert credit.yaml is None


def test_a_domain_served_twice_is_refused() -> None:
    with pytest.raises(ConfigurationInvalid) as refused:
        served_domains(Settings(domains=(FRAUD, FRAUD)))
    assert refused.value.message == (
        "the domains served (fraud, fraud) must differ in name, resource and entity routes"
    )
    assert (refused.value.code, refused.value.stage) == ("configuration_invalid", "service")


def test_two_domains_on_one_resource_are_refused(tmp_path: Path) -> None:
    copy = tmp_path / "payments_again"
    copy.mkdir()
    text = (FRAUD / "domain.yaml").read_text().replace("name: fraud\n", "name: payments\n", 1)
    (copy / "domain.yaml").write_text(text)
    with pytest.raises(ConfigurationInvalid, match=r"\(fraud, payments\) must differ"):
        served_domains(Settings(domains=(FRAUD, copy)))


@pytest.mark.parametrize(
    ("text", "fault"),
    [
        ("name: [", "not valid YAML"),
        (None, "cannot be read"),
        ("REMOVE resource", "resource: Field required"),
    ],
    ids=["not-yaml", "no-file", "no-resource"],
)
def test_a_faulty_domain_file_is_refused_naming_the_folder_and_the_fault(
    tmp_path: Path, text: str | None, fault: str
) -> None:
    folder = tmp_path / "faulty"
    folder.mkdir()
    if text == "REMOVE resource":
        text = (FRAUD / "domain.yaml").read_text().replace("resource: transactions\n", "")
    if text is not None:
        (folder / "domain.yaml").write_text(text)
    with pytest.raises(ConfigurationInvalid) as refused:
        served_domains(Settings(domains=(FRAUD, folder)))
    message = refused.value.message
    assert message.startswith(f"domain {folder} cannot be served: "), message
    assert fault in message


def test_open_and_close_a_domain(
    sqlite_repo: Path, model_root: Path, recent: pd.DataFrame, tmp_path: Path
) -> None:
    """Open: the store, the registry, the one-package deployment and its manager, the scorer,
    the prediction log and the explainer; close: batches finish, then everything is let go."""
    settings = settings_for(sqlite_repo, model_root, prediction_log_dir=tmp_path / "log")
    (domain,) = served_domains(settings)
    body = as_request(recent.iloc[-1])

    async def lifecycle() -> tuple:
        await open_domain(domain, settings)
        scorer, answers = domain.scorer, domain.answers
        assert scorer is not None
        opened = {
            "version": scorer.model.version_label,
            "routed": scorer.routed,
            "deployment": domain.deployments.live.spec if domain.deployments.live else None,
            "history": [(c.action, c.by) for c in domain.deployments.history],
            "registry": domain.registry.current.version_label if domain.registry.current else None,
            "answers": answers,
            "explainer_log": domain.explainer.log_root if domain.explainer else None,
            "answer": await scorer.score(map_records([FRAUD_API.request(**body)], scorer.mapping)),
        }
        assert scorer.deployment is domain.deployments.live
        await close_domain(domain)
        with pytest.raises(NotReady):  # the closed scorer takes no more calls
            await scorer.score(map_records([FRAUD_API.request(**body)], scorer.mapping))
        return opened, scorer

    opened, scorer = asyncio.run(lifecycle())
    assert opened["version"] == "fraud_model/v1" and not opened["routed"]
    spec = opened["deployment"]
    assert spec.name == "fraud_model/v1 alone" and spec.packages() == ["fraud_model/v1"]
    assert spec.sticky_field == next(iter(scorer.model.manifest.entity_mapping))
    assert opened["history"] == [("start", "config")]
    assert opened["registry"] == "fraud_model/v1"
    assert isinstance(opened["answers"], AnswerLog)
    assert opened["answers"].log.root == tmp_path / "log" / "fraud"
    assert opened["explainer_log"] == tmp_path / "log" / "fraud"
    (answer,) = opened["answer"]
    assert 0.0 <= answer.score <= 1.0 and answer.model_version == "fraud_model/v1"
    # Closed: nothing of the domain is held any more.
    assert domain.scorer is None and domain.answers is None
    assert domain.deployments is None and domain.registry is None and domain.build_scorer is None


def test_without_a_log_there_are_no_answers_to_explain(sqlite_repo: Path, model_root: Path) -> None:
    settings = settings_for(sqlite_repo, model_root)
    (domain,) = served_domains(settings)

    async def lifecycle() -> tuple:
        await open_domain(domain, settings)
        try:
            return domain.answers, domain.explainer
        finally:
            await close_domain(domain)

    answers, explainer = asyncio.run(lifecycle())
    assert answers is None
    assert explainer is not None and explainer.log_root is None and explainer.recent is None


@pytest.fixture(scope="module")
def twins(model_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("served_packages")
    for version in ("v1", "v1b"):
        copy_package(model_root / "fraud_model" / "v1", root / "fraud_model" / version)
    return root


def write_deployment(path: Path, challenger: str) -> Path:
    path.write_text(
        yaml.safe_dump(
            {
                "name": "canary",
                "sticky_field": "card_id",
                "champion": {"name": "champion", "package": "fraud_model/v1", "weight": 0.9},
                "challengers": [{"name": "canary", "package": challenger, "weight": 0.1}],
            }
        )
    )
    return path


def test_the_primary_domain_opens_its_deployment_file(
    sqlite_repo: Path, twins: Path, recent: pd.DataFrame, tmp_path: Path
) -> None:
    file = write_deployment(tmp_path / "deployment.yaml", "fraud_model/v1b")
    settings = settings_for(sqlite_repo, twins, deployment=file)
    (domain,) = served_domains(settings)

    async def lifecycle() -> tuple:
        await open_domain(domain, settings)
        try:
            assert domain.scorer is not None and domain.deployments is not None
            live = domain.deployments.live
            assert live is not None
            return live.spec.name, sorted(live.models), domain.scorer.routed
        finally:
            await close_domain(domain)

    assert asyncio.run(lifecycle()) == ("canary", ["fraud_model/v1", "fraud_model/v1b"], True)


def test_a_deployment_file_that_cannot_go_live_is_refused(
    sqlite_repo: Path, twins: Path, tmp_path: Path
) -> None:
    file = write_deployment(tmp_path / "deployment.yaml", "fraud_model/v9")
    settings = settings_for(sqlite_repo, twins, deployment=file)
    (domain,) = served_domains(settings)

    async def lifecycle() -> None:
        try:
            await open_domain(domain, settings)
        finally:
            await close_domain(domain)

    with pytest.raises(DeploymentRefused, match="package fraud_model/v9: no model package at"):
        asyncio.run(lifecycle())
    assert domain.scorer is None
