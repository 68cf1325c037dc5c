"""Stand-ins for the Hydra plugins of cnnlab's extras: without the Optuna sweeper (`hparams_search=`) or the
submitit launcher (`hydra/launcher=slurm`), the run stops in one line naming the extra, instead of Hydra's
"Could not find 'hydra/sweeper/optuna'". Registered only while the real plugin is absent; Hydra imports every module
under hydra_plugins when it starts."""

import sys
from typing import Any

from hydra.core.config_store import ConfigStore
from hydra.plugins.launcher import Launcher
from hydra.plugins.sweeper import Sweeper

from cnnlab.extras import installed, message


class MissingSweeper(Sweeper):
    """hydra/sweeper=optuna without hydra-optuna-sweeper."""

    def __init__(self, **_: Any) -> None:
        sys.exit(message("hydra-optuna-sweeper", "sweeps", "hparams_search= (the Optuna sweeper)"))

    def setup(self, *args: Any, **kwargs: Any) -> None: ...

    def sweep(self, arguments: list[str]) -> Any: ...


class MissingLauncher(Launcher):
    """hydra/launcher=slurm without hydra-submitit-launcher."""

    def __init__(self, **_: Any) -> None:
        sys.exit(message("hydra-submitit-launcher", "slurm", "hydra/launcher=slurm"))

    def setup(self, *args: Any, **kwargs: Any) -> None: ...

    def launch(self, job_overrides: Any, initial_job_idx: int) -> Any: ...


store = ConfigStore.instance()
if not installed("hydra_plugins.hydra_optuna_sweeper"):
    store.store(group="hydra/sweeper", name="optuna", provider="cnnlab",
                node={"_target_": f"{__name__}.MissingSweeper"})
if not installed("hydra_plugins.hydra_submitit_launcher"):
    store.store(group="hydra/launcher", name="submitit_slurm", provider="cnnlab",
                node={"_target_": f"{__name__}.MissingLauncher"})
