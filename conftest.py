"""Shared by the tests and the doctests in ``src/``: every doctest starts seeded, with ``torch`` imported."""

import pytest
import torch


@pytest.fixture(autouse=True)
def _doctest_namespace(doctest_namespace: dict) -> None:
    torch.manual_seed(0)
    doctest_namespace["torch"] = torch
