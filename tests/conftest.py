import pytest
import torch


def pytest_addoption(parser):
    parser.addoption("--device", default="cpu", help="device for the generic contract tests (cpu, cuda)")
    parser.addoption("--runslow", action="store_true", help="also run tests marked slow")
    parser.addoption("--threads", type=int, default=1,
                     help="torch intra-op threads (default 1: the tests' tiny tensors gain nothing from more, and on "
                          "a loaded machine every multi-threaded op waits for a descheduled thread)")


def pytest_configure(config):
    torch.set_num_threads(config.getoption("--threads"))
    config.addinivalue_line("markers", "slow: long-running; run with --runslow")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--runslow"):
        return
    skip = pytest.mark.skip(reason="slow: run with --runslow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def device(request) -> torch.device:
    return torch.device(request.config.getoption("--device"))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
