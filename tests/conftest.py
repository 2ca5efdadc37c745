import pytest
import torch

# The tests run tiny tensors: intra-op threads only add synchronisation, which on a loaded machine
# costs more than the work (a (16, 5, 4) softmax: 9 us on one thread, up to ms on two busy cores).
torch.set_num_threads(1)


def pytest_addoption(parser):
    parser.addoption("--device", default="cpu", help="device for the generic contract tests (cpu, cuda)")
    parser.addoption("--runslow", action="store_true", help="also run tests marked slow")


def pytest_configure(config):
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


@pytest.fixture(autouse=True)
def _one_thread():
    """Every test starts on one thread, whatever a previous test's ``--threads`` left behind."""
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(1)
