"""Evaluation: rollouts, normalized scores, Q-estimate bias, leaderboard. Knows nothing of training."""
