import numpy as np
import pytest
from gymnasium import spaces

from gym_prefs.spaces import (
    UnsupportedSpaceError,
    check_space,
    encode,
    encoded_size,
    image_shape_chw,
    is_image,
    space_from_config,
    space_to_config,
)


def test_discrete_and_multidiscrete_become_one_hot():
    assert encode(spaces.Discrete(3, start=1), np.array([1, 3])).tolist() == [[1, 0, 0], [0, 0, 1]]
    md = spaces.MultiDiscrete([2, 3])
    out = encode(md, np.array([[1, 2], [0, 0]]))
    assert out.tolist() == [[0, 1, 0, 0, 1], [1, 0, 1, 0, 0]]
    assert encoded_size(md) == 5


def test_box_is_flattened_to_float32():
    out = encode(spaces.Box(-1, 1, (2, 3)), np.ones((4, 2, 3), dtype=np.float64))
    assert out.shape == (4, 6) and out.dtype == np.float32


@pytest.mark.parametrize(
    ("shape", "chw"),
    [((84, 84, 4), (4, 84, 84)), ((4, 84, 84), (4, 84, 84)), ((84, 84), (1, 84, 84)), ((210, 160, 3), (3, 210, 160))],
)
def test_image_layouts(shape, chw):
    space = spaces.Box(0, 255, shape, np.uint8)
    assert is_image(space)
    assert image_shape_chw(space) == chw


def test_float_box_is_not_an_image():
    assert not is_image(spaces.Box(0, 255, (84, 84, 3), np.float32))


@pytest.mark.parametrize(
    "space",
    [
        spaces.Dict({"x": spaces.Box(-1, 1, (2,))}),
        spaces.Tuple((spaces.Discrete(2), spaces.Discrete(3))),
        spaces.Text(10),
    ],
)
@pytest.mark.parametrize("role", ["observation", "action"])
def test_unsupported_spaces_name_the_space_and_the_fix(space, role):
    with pytest.raises(UnsupportedSpaceError) as error:
        check_space(space, role)
    message = str(error.value)
    assert type(space).__name__ in message
    assert ("FlattenObservation" in message) if role == "observation" else ("ActionWrapper" in message)


@pytest.mark.parametrize(
    "space",
    [
        spaces.Box(-1, 1, (3,)),
        spaces.Box(np.array([-1.0, 0.0]), np.array([1.0, 2.0])),
        spaces.Box(0, 255, (8, 8, 3), np.uint8),
        spaces.Discrete(4, start=2),
        spaces.MultiDiscrete([2, 5]),
        spaces.MultiBinary(3),
    ],
)
def test_space_config_round_trip(space):
    rebuilt = space_from_config(space_to_config(space))
    assert rebuilt == space
