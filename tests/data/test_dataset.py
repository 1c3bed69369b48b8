import numpy as np

from offrl.data.dataset import returns_to_go


def test_returns_to_go_restart_at_terminals_and_truncations():
    rewards = np.array([1.0, 1.0, 1.0, 2.0, 2.0, 3.0])
    terminals = np.array([0, 0, 1, 0, 0, 0], dtype=bool)
    timeouts = np.array([0, 0, 0, 0, 1, 1], dtype=bool)
    np.testing.assert_allclose(returns_to_go(rewards, terminals, timeouts, 0.5),
                               [1.75, 1.5, 1.0, 3.0, 2.0, 3.0])
