"""WideNet tests: no curves.png (a matplotlib figure per run costs about a second of CPU; the
shared core's plotting has its own tests)."""
import pytest

from shared.train.run import RunDir


def no_curves():
    """Turn off RunDir.plot in this process (spawned workers call it themselves)."""
    RunDir.plot = lambda self, *args, **kwargs: None


@pytest.fixture(autouse=True)
def _no_curves(monkeypatch):
    monkeypatch.setattr(RunDir, "plot", lambda self, *args, **kwargs: None)
