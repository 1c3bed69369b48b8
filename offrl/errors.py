"""One exception type for every user-facing error; the CLI turns it into one line and exit code 2."""

from __future__ import annotations

__all__ = ["OfflineRLError", "TrainingInterrupted", "first_line", "DIVERGENCE_LIMIT"]

# A training metric this large is divergence even if finite, and stops the run (offrl.train.loop): losses and
# Q-values of these tasks stay below ~1e6, and a run that reached 1e31 (issue 12) produced "ordinary" rows with a
# Q bias of -8e11. Here rather than in the loop so that the CLI's defaults need not import torch.
DIVERGENCE_LIMIT = 1e10


class OfflineRLError(Exception):
    """Bad input: a file, argument or dataset that cannot be used. The message names it and the problem."""


class TrainingInterrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM stopped a training loop after it checkpointed at an update boundary; `resume=True`
    (`--resume`) continues it. A KeyboardInterrupt, so notebooks and scripts treat it as the interrupt it is."""

    def __init__(self, signum: int, step: int, checkpoint: str | None):
        import signal

        self.signum, self.step, self.checkpoint = signum, step, checkpoint
        where = f"checkpoint saved at {checkpoint}, continue with --resume" if checkpoint else "no run folder to keep"
        super().__init__(f"interrupted by {signal.Signals(signum).name} at step {step}; {where}")

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


def first_line(exc: BaseException) -> str:
    """An exception's message as one line (libraries raise several): its first line, else its type's name."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
