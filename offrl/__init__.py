"""offrl: a dataset-centric offline reinforcement-learning toolkit.

    import offrl
    dataset = offrl.load_dataset("halfcheetah/medium-v1", collect_missing=True)
    agent = offrl.CQL("fast")
    agent.fit(dataset, n_steps=1_000)
    offrl.evaluate(agent, dataset).normalized_return

The public surface is what this module exports; everything else is importable but may change.
"""

__version__ = "0.2.0"

from offrl.agents import BC, CQL, SAC, Agent, CalQL, load_agent  # noqa: E402
from offrl.algos.bc import BCConfig  # noqa: E402
from offrl.algos.cql import CQLConfig  # noqa: E402
from offrl.algos.ope import OPEConfig  # noqa: E402
from offrl.algos.sac import SACConfig  # noqa: E402
from offrl.config import load_config  # noqa: E402
from offrl.data.collect import collect, collect_shipped  # noqa: E402
from offrl.data.d4rl import import_d4rl  # noqa: E402
from offrl.data.dataset import OfflineDataset, dataset_from_arrays, load_dataset  # noqa: E402
from offrl.data.minari_io import export_minari, import_minari  # noqa: E402
from offrl.data.registry import list_cards as list_datasets  # noqa: E402
from offrl.envs import make_env  # noqa: E402
from offrl.errors import OfflineRLError  # noqa: E402
from offrl.evaluation.report import EvaluationReport, evaluate  # noqa: E402
from offrl.runs import Run, TrainingReport, restore_run  # noqa: E402
from offrl.train.loop import Schedule  # noqa: E402
from offrl.train.ope import OPEReport, evaluate_policy_offline, load_target_policy  # noqa: E402

__all__ = [
    "OPEConfig", "OPEReport", "evaluate_policy_offline", "load_target_policy",
    "__version__", "OfflineRLError",
    # datasets
    "OfflineDataset", "load_dataset", "dataset_from_arrays", "list_datasets", "collect", "collect_shipped",
    "import_d4rl", "import_minari", "export_minari", "make_env",
    # agents and configs
    "Agent", "CQL", "CalQL", "SAC", "BC", "CQLConfig", "SACConfig", "BCConfig", "load_config", "load_agent",
    # runs and evaluation
    "TrainingReport", "Run", "restore_run", "evaluate", "EvaluationReport", "Schedule",
]
