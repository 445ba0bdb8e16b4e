"""The UCI regression benchmark (Hernández-Lobato & Adams 2015): eight of its nine data
sets, read from their standard split folders (red wine, the ninth, ships with bslrun:
``bslrun.data.wine``).

Each data set is a folder in the benchmark's layout (``splits.read_split_dir``):
data.txt, the feature and target column indices, and the 0-based row indices of each
train/test split (20 splits; 5 for protein). The split files carry Yarin Gal's
CC BY-NC 4.0 licence, so bslrun does not ship them: ``data.split_dir`` names the folder
(its YAML default is ``$BSLRUN_UCI_DIR/<folder>``, see configs/data/<name>.yaml).
"""

from __future__ import annotations

from bslrun.config import DataConfig
from bslrun.data.splits import Dataset, assemble, partition
from bslrun.errors import DataError
from bslrun.registry import DataSet

# name -> what its regression target is (the target_name of data.json and the figures)
TARGETS = {
    "boston": "median home value (k$)",
    "concrete": "compressive strength (MPa)",
    "energy": "heating load (kWh/m^2)",
    "kin8nm": "end-effector distance",
    "naval": "gas turbine compressor decay coefficient",
    "power": "net hourly electrical output (MW)",
    "protein": "RMSD of the protein structure (angstrom)",
    "yacht": "residuary resistance per unit displacement",
}


def load(name: str, cfg, key) -> Dataset:
    if cfg.split_dir is None:
        raise DataError(
            f"data={name} is read from its UCI benchmark split folder; set data.split_dir="
            "<folder> (or $BSLRUN_UCI_DIR to the folder holding all nine, as the YAML does)"
        )
    x, y, parts = partition(cfg, key, 0, None, None)
    fields = dict(
        name=name,
        task="regression",
        num_classes=0,
        feature_names=tuple(f"x{j}" for j in range(x.shape[1])),
        target_name=TARGETS[name],
    )
    return assemble(x, y, parts, cfg, fields, regression=True)


def _loader(name: str):
    def load_named(cfg, key) -> Dataset:
        return load(name, cfg, key)

    load_named.__name__ = f"load_{name}"
    return load_named


DATASETS = {name: DataSet(_loader(name), DataConfig, "regression") for name in TARGETS}
