"""The full Kubernetes walkthrough (docs/deploy-kubernetes.md) passes the same checks as the
README's deployment section (tests/test_helm_docs.py): it names only values the chart has, and
its helm commands and value files render in order."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests import test_helm_docs

FULL_DOC = Path(__file__).resolve().parent.parent / "docs" / "deploy-kubernetes.md"


@pytest.fixture()
def full_doc(monkeypatch):
    monkeypatch.setattr(test_helm_docs, "DEPLOY_DOC", FULL_DOC)
    return FULL_DOC


def test_walkthrough_names_only_existing_values(full_doc) -> None:
    test_helm_docs.test_docs_name_only_existing_values()


def test_walkthrough_renders_in_order(full_doc, helm: str, tmp_path: Path) -> None:
    test_helm_docs.test_docs_walkthrough_renders_in_order(helm, tmp_path)
