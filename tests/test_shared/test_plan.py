"""Plans keyed by module name: every pattern must match, a module matched twice takes the first
style, and swap() replaces by type (a subclass before its base) or names the wrong layer."""
import pytest
import torch.nn as nn

from shared.errors import UsageError
from shared.parallel.plan import apply_plan, swap


class Wrapped(nn.Module):
    def __init__(self, inner, tag):
        super().__init__()
        self.inner, self.tag = inner, tag


def _model():
    return nn.Sequential(nn.Linear(2, 2), nn.LazyLinear(2), nn.ReLU())


def test_swap_replaces_by_type_in_order_and_names_the_wrong_layer():
    style = swap({nn.LazyLinear: lambda m: Wrapped(m, "lazy"), nn.Linear: lambda m: Wrapped(m, "lin")})
    model = apply_plan(_model(), {"0": style, "1": style})
    assert (model[0].tag, model[1].tag) == ("lin", "lazy")      # LazyLinear is a Linear too
    with pytest.raises(TypeError, match="2 is a ReLU, not a LazyLinear or Linear"):
        apply_plan(_model(), {"2": style})


def test_every_pattern_must_match_and_the_first_style_wins():
    with pytest.raises(UsageError, match="blocks"):
        apply_plan(_model(), {"blocks.*": swap({nn.Linear: lambda m: m})})
    first = swap({nn.Module: lambda m: Wrapped(m, "first")})
    second = swap({nn.Module: lambda m: Wrapped(m, "second")})
    model = apply_plan(_model(), {"0": first, "*": second})
    assert model[0].tag == "first" and model[2].tag == "second"
