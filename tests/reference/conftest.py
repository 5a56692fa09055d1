import pytest


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Tiny models run fastest on one thread, and a shared 2-core machine stays responsive."""
    torch = pytest.importorskip("torch")
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
