"""``hydra/launcher=vectorised``: the jobs of a sweep that can share one compiled program
train together; the others run one by one, as with Hydra's basic launcher.

Hydra instantiates launchers only from the ``hydra_plugins`` package, so the class lives
here; the work is ``bslrun.launcher``'s. Hydra imports every plugin module when any
command starts: this one imports nothing more.
"""

from dataclasses import dataclass

from hydra.core.config_store import ConfigStore
from hydra.plugins.launcher import Launcher


@dataclass
class VectorisedLauncherConf:
    _target_: str = "hydra_plugins.bslrun_launcher.vectorised_launcher.VectorisedLauncher"


ConfigStore.instance().store(group="hydra/launcher", name="vectorised", node=VectorisedLauncherConf)


class VectorisedLauncher(Launcher):
    def __init__(self) -> None:
        self.config = self.task_function = self.hydra_context = None

    def setup(self, *, hydra_context, task_function, config) -> None:
        self.config, self.hydra_context, self.task_function = config, hydra_context, task_function

    def launch(self, job_overrides, initial_job_idx: int):
        from bslrun.launcher import launch

        return launch(self, job_overrides, initial_job_idx)
