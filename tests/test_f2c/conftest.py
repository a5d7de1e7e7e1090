"""One torch thread for f2c's tests (tiny convolutions gain nothing from a second thread, and on a
shared machine a spinning second thread makes them many times slower); restored afterwards."""
import pytest
import torch


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
