"""``hydra/sweeper=optuna``: Hydra's optuna sweeper, whose study ends as any sweep does (its
summary, its failed jobs, exit 1) even when no trial completed, which optuna refuses with
a traceback (``bslrun.sweeper.without_best_trial``).

``bslrun.registry.use_own_plugins`` stores its config as ``hydra/sweeper/optuna`` in place
of the plugin's own.
"""

from hydra_plugins.hydra_optuna_sweeper.optuna_sweeper import OptunaSweeper


class BslrunOptunaSweeper(OptunaSweeper):
    def sweep(self, arguments) -> None:
        from bslrun.sweeper import without_best_trial

        without_best_trial(super().sweep, arguments)
