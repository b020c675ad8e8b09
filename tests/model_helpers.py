"""What the reward model's tests share: a few spaces, and a model marked as fitted."""

import numpy as np
from gymnasium import spaces

from gym_prefs import RewardEnsemble

VEC_OBS = spaces.Box(-1, 1, (5,))
BOX_ACT = spaces.Box(-1, 1, (2,))
IMAGES = spaces.Box(0, 255, (84, 84, 4), np.uint8)


def fitted(model: RewardEnsemble) -> RewardEnsemble:
    """``model``, marked fitted so that it predicts with its (untrained) weights."""
    model.fitted.fill_(True)
    return model
