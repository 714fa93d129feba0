"""Groups rule and bad input: each error names the bad value and the fix."""
import pytest
import torch

import evonorm_plugins as ep
from evonorm_plugins.functional import evonorm_s0, resolve_groups

from support import ALL_LAYERS, S_LAYERS


@pytest.mark.parametrize("channels, groups, expected", [(64, 32, 32), (24, 32, 24), (80, 32, 20), (96, 32, 32), (100, 32, 25), (7, 32, 7), (13, 4, 1), (1, 32, 1)])
def test_groups_lowered_to_largest_divisor(channels, groups, expected):
    assert resolve_groups(channels, groups) == expected
    assert ep.EvoNormS0(channels, groups=groups).groups == expected


def test_group_size_sets_groups():
    assert ep.EvoNormS1(64, group_size=16).groups == 4
    assert ep.EvoNormS1(64, groups=3, group_size=8).groups == 8  # group_size wins, as in timm


@pytest.mark.parametrize("name", list(S_LAYERS))
def test_group_size_must_divide(name):
    with pytest.raises(ValueError, match=r"group_size=12 does not divide num_features=64.*divisor"):
        S_LAYERS[name](64, group_size=12)


@pytest.mark.parametrize("kwargs, pattern", [
    (dict(group_size=0), r"group_size must be a positive integer, got 0"),
    (dict(group_size=-4), r"group_size must be a positive integer, got -4"),
    (dict(groups=0), r"groups must be a positive integer, got 0.*groups=32"),
])
def test_non_positive_group_sizes(kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        ep.EvoNormS0(64, **kwargs)


@pytest.mark.parametrize("name", list(ALL_LAYERS))
def test_wrong_rank(name):
    with pytest.raises(ValueError, match=r"expects an input of shape \(N, C, H, W\).*2-D tensor of shape \[4, 8\].*x\[\.\.\., None, None\]"):
        ALL_LAYERS[name](8)(torch.randn(4, 8))


@pytest.mark.parametrize("name", list(ALL_LAYERS))
def test_wrong_channel_count(name):
    layer = ALL_LAYERS[name](8)
    with pytest.raises(ValueError, match=rf"EvoNorm{name}: the input has 16 channels but \w+ has 8 elements; build the layer with num_features=16"):
        layer(torch.randn(2, 16, 4, 4))


@pytest.mark.parametrize("name", list(ALL_LAYERS))
def test_integer_input(name):
    with pytest.raises(TypeError, match=r"floating-point input, got torch.int64.*x.float\(\)"):
        ALL_LAYERS[name](4)(torch.ones(1, 4, 2, 2, dtype=torch.long))


@pytest.mark.parametrize("bad", [0, -3, 2.5, True])
def test_bad_num_features(bad):
    with pytest.raises(ValueError, match=rf"num_features must be a positive int .*got {bad!r}"):
        ep.EvoNormB0(bad)


def test_bad_eps_and_momentum():
    with pytest.raises(ValueError, match=r"eps must be positive, got 0"):
        ep.EvoNormS2(8, eps=0)
    with pytest.raises(ValueError, match=r"momentum must be in \[0, 1\], got 1.5"):
        ep.EvoNormB1(8, momentum=1.5)


def test_unknown_keyword_is_a_type_error_but_host_keywords_are_accepted():
    with pytest.raises(TypeError, match=r"EvoNormS0 got unexpected keyword argument\(s\) \['grups'\]"):
        ep.EvoNormS0(64, grups=32)
    layer = ep.EvoNormS0(64, act_layer=torch.nn.ReLU, act_kwargs={}, inplace=True)
    assert layer.v is not None
    # one constructor shape for all: B-series accept groups, S-series accept momentum (both unused)
    ep.EvoNormB0(64, groups=32, group_size=8)
    ep.EvoNormS0(64, momentum=0.1)


def test_eval_without_running_var_is_an_error():
    with pytest.raises(ValueError, match=r"running_var is None; pass the running_var buffer, or training=True"):
        ep.functional.evonorm_b0(torch.randn(2, 4, 3, 3), None, training=False)


def test_functional_groups_follow_the_module_rule():
    x = torch.randn(2, 24, 3, 3)
    torch.testing.assert_close(evonorm_s0(x, 32), evonorm_s0(x, 24))
