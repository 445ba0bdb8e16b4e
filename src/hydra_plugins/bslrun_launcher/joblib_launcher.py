"""``hydra/launcher=joblib``: Hydra's joblib launcher, whose sweep outlives a worker
process killed outright (the kernel's out-of-memory killer sends SIGKILL):
``bslrun.launcher.outlive_lost_workers`` names the lost jobs in their folders and hands the
sweep its results, so that the sweep ends with its summary.

``bslrun.registry.use_own_plugins`` stores its config as ``hydra/launcher/joblib`` in place
of the plugin's own.
"""

from hydra_plugins.hydra_joblib_launcher.joblib_launcher import JoblibLauncher


class BslrunJoblibLauncher(JoblibLauncher):
    def launch(self, job_overrides, initial_job_idx: int):
        from bslrun.launcher import outlive_lost_workers

        parent = super().launch
        return outlive_lost_workers(self, parent, job_overrides, initial_job_idx)
