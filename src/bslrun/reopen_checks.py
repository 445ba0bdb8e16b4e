"""A reopened run folder is checked, never trusted: its data spec, its config's model and
its parameters are compared with what this bslrun would build, before anything is
computed from them. A file that does not fit is one line naming it (exit 5,
``ResourceError``: a damaged or mismatched run folder); a config that names an impossible
model is exit 2. Without these checks a hand-edited or mixed-up folder predicts with the
wrong numbers (a standardiser with std 0 writes NaN) or fails deep inside JAX.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from bslrun.errors import BslrunError, ConfigError, DataError, ResourceError

# data.json's keys and the JSON types each must have (DataSpec.to_json writes them).
SPEC_TYPES = {
    "name": str,
    "task": str,
    "input_dim": int,
    "num_classes": int,
    "feature_names": list,
    "target_name": str,
    "n_total": int,
    "n_train": int,
    "dynamic_binarize": bool,
    "x_scaler": dict,
    "y_scaler": dict,
}
OPTIONAL_TYPES = {
    "class_names": list,
    "image_shape": (list, type(None)),
    "density": (dict, type(None)),
}
TASKS = ("regression", "classification")
INT32_MAX = 2**31 - 1
TYPE_NAMES = {
    str: "text",
    int: "an integer",
    bool: "true or false",
    list: "a list",
    dict: "an object",
}


def folder_damaged(path: Path, why: str) -> ResourceError:
    return ResourceError(
        f"{path} {why}; the run folder is damaged or mixed up with another run's: restore it "
        "from a copy of the whole run folder"
    )


# ------------------------------------------------------------------ data.json


def check_spec_json(data, path: Path, config: dict) -> None:
    """Every field of data.json of the right type and range, consistent with itself and
    with config.json's data section."""
    if not isinstance(data, dict):
        raise folder_damaged(path, f"holds {type(data).__name__}, not the data spec object")
    problem = type_problem(data) or spec_problem(data, config)
    if problem:
        raise folder_damaged(path, problem)


def type_problem(data: dict) -> str:
    """The first field of data.json whose JSON type is wrong ("" when none is)."""
    for key, kind in {**SPEC_TYPES, **OPTIONAL_TYPES}.items():
        if key not in data and key in OPTIONAL_TYPES:
            continue
        value = data.get(key)
        # JSON's true is no integer count here, however Python sees it.
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            return f"has {key}={short(value)}, not {TYPE_NAMES.get(kind, 'of another type')}"
    texts = [*data["feature_names"], *data.get("class_names", ())]
    return "" if all(isinstance(t, str) for t in texts) else "has names that are not text"


def short(value) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def spec_problem(data: dict, config: dict) -> str:
    """Why data.json's values cannot describe the run's data ("" when they can)."""
    failed = next((why for ok, why in spec_rules(data, config) if not ok), "")
    d = data["input_dim"]
    x_problem = scaler_problem(data["x_scaler"], "x_scaler", d)
    return failed or x_problem or scaler_problem(data["y_scaler"], "y_scaler", 1)


def spec_rules(data: dict, config: dict) -> list[tuple[bool, str]]:
    """(holds, what is wrong when it does not) for each rule a data spec follows."""
    d, classes, task = data["input_dim"], data["num_classes"], data["task"]
    section = config.get("data")
    named = section.get("name") if isinstance(section, dict) else None
    names, class_names = data["feature_names"], data.get("class_names", ())
    return [
        (task in TASKS, f"has task={task!r}, not one of {list(TASKS)}"),
        (min(d, data["n_train"], data["n_total"]) >= 1, "has a count below 1"),
        (
            classes >= 2 if task == "classification" else classes == 0,
            f"has num_classes={classes} for task={task}",
        ),
        (len(names) in (0, d), f"names {len(names)} features for input_dim={d}"),
        (
            len(class_names) in (0, classes),
            f"names {len(class_names)} classes for num_classes={classes}",
        ),
        (named in (None, data["name"]), f"is for data {data['name']!r}, config.json for {named!r}"),
        (image_fits(data.get("image_shape"), d), f"has an image_shape that is not {d} pixels"),
    ]


def image_fits(shape, input_dim: int) -> bool:
    if shape is None:
        return True
    sizes_ok = all(isinstance(s, int) and not isinstance(s, bool) and s >= 1 for s in shape)
    return len(shape) == 3 and sizes_ok and math.prod(shape) == input_dim


def scaler_problem(scaler: dict, name: str, width: int) -> str:
    """Why a standardiser's mean and std are unusable: not numbers, not one per column,
    not finite in float32 (as the run uses them), or a std that is not positive (dividing
    by it gives inf and NaN)."""
    for part in ("mean", "std"):
        try:
            values = np.asarray(scaler.get(part), dtype=np.float64)
        except (TypeError, ValueError):
            return f"has {name}.{part}={short(scaler.get(part))}, not numbers"
        if values.shape not in ((), (width,)):
            return f"has {values.size} values in {name}.{part}, for {width} columns"
        with np.errstate(over="ignore"):
            values = values.astype(np.float32)
        if not np.isfinite(values).all():
            return f"has {name}.{part} values that are not finite float32 numbers"
        if part == "std" and not (values > 0).all():
            return f"has {name}.std values that are not positive (a standardiser divides by them)"
    return ""


def spec_of(data: dict, path: Path):
    """The DataSpec of a checked data.json (a toy's density rebuilt from its arguments)."""
    from bslrun.data import spec_from_json

    try:
        return spec_from_json(data)
    except (TypeError, ValueError, KeyError) as error:
        raise folder_damaged(path, f"cannot describe the data ({type(error).__name__})") from None


# ------------------------------------------------------------------ config.json


def check_model(model, root: Path) -> None:
    """The model section's ranges (model.hidden positive, ...), as training checks them."""
    try:
        model.check()
    except ConfigError as error:
        raise ConfigError(f"{root}/config.json: {error}; restore the file from a copy") from None


def check_seed(seed, root: Path) -> None:
    from bslrun.config import MAX_SEED

    if type(seed) is not int or not 0 <= seed <= MAX_SEED:
        raise ConfigError(
            f"{root}/config.json has seed={short(seed)}, not an integer from 0 to {MAX_SEED}; "
            "restore the file from a copy"
        )


def built(build, root: Path):
    """``build()`` of the family config.json describes; what JAX refuses there (a network
    too large to describe, sizes that overflow) is the config's fault, in one line."""
    try:
        return build()
    except ConfigError as error:  # e.g. a likelihood that does not fit data.json's task
        raise ConfigError(
            f"{root}/config.json does not fit the run folder ({error}); restore config.json "
            "and data.json from a copy of the run folder"
        ) from None
    except BslrunError:
        raise
    except (ValueError, TypeError, OverflowError, MemoryError) as error:
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0][:200]
        raise ConfigError(
            f"{root}/config.json describes a model this bslrun cannot build ({reason}); "
            "restore the file from a copy"
        ) from None


# ------------------------------------------------------------------ parameters


def check_params(params, family, path: Path) -> None:
    """The parameters' tree, and every array's shape and dtype, as the family built from
    config.json initialises them (traced abstractly: nothing is allocated)."""
    from bslrun.inference.svi import variable_shapes
    from bslrun.nets import tree_mismatch

    expected = built(lambda: variable_shapes(family), path.parent.parent)
    problem = tree_mismatch(params, expected)
    if problem:
        raise folder_damaged(path, f"does not fit the model of config.json: {problem}")


# ------------------------------------------------------------------ inputs


def check_inputs(x, spec) -> np.ndarray:
    """Inputs as float64 (n, d): a mapping is matched to the features by name; images may
    come as (n, height, width[, channels]). One DataError line for anything else."""
    if isinstance(x, Mapping):
        x = columns_by_name(dict(x), spec)
    try:
        array = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError):
        raise DataError(
            f"inputs must be numbers (an array of shape (rows, {spec.input_dim})); "
            "convert text columns first"
        ) from None
    if array.ndim == 1 and spec.input_dim == 1:
        array = array[:, None]
    if array.ndim > 2 and math.prod(array.shape[1:]) == spec.input_dim:
        array = array.reshape(len(array), -1)
    if array.ndim != 2 or array.shape[1] != spec.input_dim:
        raise DataError(
            f"inputs of shape {array.shape} do not fit: the run was trained on "
            f"{spec.input_dim} input columns{named(spec)}; give an array (rows, {spec.input_dim})"
        )
    if len(array) == 0:
        raise DataError("the inputs have no rows; give at least one")
    bad = ~np.isfinite(array)
    if bad.any():
        i, j = np.argwhere(bad)[0]
        column = spec.feature_names[j] if spec.feature_names else str(j)
        raise DataError(
            f"input row {i} (0-based), column {column!r} holds {array[i, j]}; fill in or "
            "drop that row"
        )
    return array


def named(spec) -> str:
    if not spec.feature_names:
        return ""
    shown = ", ".join(spec.feature_names[:12]) + (" ..." if len(spec.feature_names) > 12 else "")
    return f" ({shown})"


def feature_positions(names, spec, source: str = "the inputs") -> list[int]:
    """Positions in ``names`` of the run's features, in training order. The target column
    may be present (it is left out); any other unknown or missing column is an error."""
    if not spec.feature_names:
        raise DataError(
            f"data={spec.name} has no feature names; give {source} as an array, not named columns"
        )
    names = [str(n) for n in names]
    missing = [n for n in spec.feature_names if n not in names]
    extra = [n for n in names if n not in spec.feature_names and n != spec.target_name]
    if missing:
        raise DataError(
            f"missing input column(s) {', '.join(map(repr, missing))} in {source}; the run "
            f"was trained on{named(spec)}"
        )
    if extra:
        raise DataError(
            f"column(s) {', '.join(map(repr, extra))} in {source} were not inputs in "
            f"training; drop them (the run was trained on{named(spec)})"
        )
    return [names.index(n) for n in spec.feature_names]


def columns_by_name(columns: dict, spec) -> np.ndarray:
    """The features, in training order, from {name: column} (see ``feature_positions``)."""
    values = list(columns.values())
    return np.stack([np.asarray(values[j]) for j in feature_positions(columns, spec)], axis=-1)


def check_binary(x: np.ndarray, family, config: dict) -> None:
    """A VAE with a Bernoulli likelihood scores binary images only (any other pixel has
    probability 0, log p(x) = -inf): say how the run's data were binarised."""
    if getattr(family.cfg, "likelihood", None) != "bernoulli":
        return
    off = (x != 0) & (x != 1)
    if not off.any():
        return
    i, j = np.argwhere(off)[0]
    data = config.get("data") or {}
    how = str(data.get("binarize"))
    pixels = "x / 255" if x.max() > 1 else "x"  # raw 0..255 pixels
    if how == "static" and data.get("threshold") is not None:
        fix = f"({pixels} > {data['threshold']}), as the run's data were (data.threshold)"
    else:
        fix = f"({pixels} > 0.5) or draws of Bernoulli({pixels}) (the run's data.binarize={how})"
    raise DataError(
        f"the run's VAE scores binary images (pixels 0 or 1: a Bernoulli likelihood) but image "
        f"{i} (0-based), pixel {j} is {x[i, j]:g}: binarise them with {fix}"
    )


def check_memory(program, args: tuple, what: str, num: int) -> None:
    """Refuse, before anything compiles, a call whose peak memory (as training's memory
    check estimates it, from shapes alone) exceeds what the machine has free: XLA would
    otherwise abort the process (SIGABRT) or the kernel kill it."""
    import jax

    from bslrun.config import TrainerConfig
    from bslrun.inference import memory

    too_many = ConfigError(
        f"{num} {what} are more than one program can index; ask for fewer, in several "
        "calls if you need more"
    )
    if num >= 2**63:
        raise too_many
    try:
        with warnings.catch_warnings():  # e.g. int64 indices truncated to int32: the line says so
            warnings.simplefilter("ignore")
            traced = jax.make_jaxpr(program)(*args)
    except (OverflowError, TypeError):
        if num <= INT32_MAX:
            raise  # not the count's fault: a bug
        raise too_many from None  # JAX indexes with int32 (x64 off)
    # The result is copied to the host, and written out from there.
    need = memory.peak(traced.jaxpr) + 2 * memory.nbytes(traced.out_avals)
    limit, source = memory.available(TrainerConfig())
    if limit is not None and need > limit:
        fits = max(1, int(num * limit / need))
        raise ConfigError(
            f"{num} {what} need about {memory._gb(need)} of memory but {source} is "
            f"{memory._gb(max(limit, 0))}; ask for fewer (about {fits} fit), in several calls "
            "if you need more"
        )


def seed_key(seed):
    """A PRNG key from an integer seed (0 to config.MAX_SEED, as bslrun's seed=), or the
    key itself."""
    import jax

    from bslrun.config import MAX_SEED

    if isinstance(seed, (int, np.integer)) and not isinstance(seed, bool):
        if not 0 <= seed <= MAX_SEED:
            raise ConfigError(f"seed {seed} is out of range; use an integer from 0 to {MAX_SEED}")
        return jax.random.PRNGKey(int(seed))
    if isinstance(seed, (jax.Array, np.ndarray)):
        return seed  # a key: JAX checks it
    raise ConfigError(
        f"seed {short(seed)} is neither an integer from 0 to {MAX_SEED} nor a PRNG key "
        "(jax.random.PRNGKey(...))"
    )
