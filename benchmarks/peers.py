"""Throughput against the peers: bslrun's fused epoch, plain NumPyro, plain Flax + optax.

For each workload (``benchmarks/peer_*.py``: the MLP VAE, the mean-field BNN, the MAF,
the lecture's conv VAE) every stack trains the same model (architecture, objective,
batch size, Adam, float32) on the same device arrays, in one process; the stacks are
described in ``benchmarks.peer_stacks``. After one untimed epoch each (compiled
before), ``--reps`` rounds (default 5) time ``--epochs`` epochs (default: each
workload's) of every stack, the stack that goes first rotating from round to round, so
that all share the machine's noise. Reported per stack: training examples per second
(median over rounds) and its ratio to the workload's baseline (numpyro_loop;
flax_optax_step for the conv VAE), the median of the per-round ratios. The float32
matmul peak (``benchmarks.matmul_peak``) is the best rate measured before and after the
races and briefly after every round; with the MLP VAE's analytic FLOP count
(``benchmarks.vae_epoch``) it gives each stack's fraction of peak there.

Sanity, per workload: every stack trains the same number of parameters; its first
epoch's loss lies within the workload's first tolerance of the stacks' median (same
model, objective and scaling, from like initialisations: a missing N/B weight or KL
term shows here); its parameters and every epoch's loss are finite, and its best epoch
loss lies within the workload's tolerance of the median (each stack trains). The best
rather than the last epoch's, because the MAF's epoch losses spike (from 1.0 to 2.9
nats and back between neighbouring epochs at lr 1e-3, in every stack), whatever the
order of batches. Tolerances are relative to max(1, |median|); each workload module
says why it chose its own.

The previous results file, if any, is read before this one is written: ``previous``
holds each stack's new/old examples per second, and flags ``moved_backwards`` any
bslrun figure more than 10% below the previous one (reported, not fatal).
"""

from __future__ import annotations

import json
import math
import statistics
import time
from pathlib import Path

from benchmarks import matmul_peak, peer_bnn, peer_conv_vae, peer_maf, peer_mlp_vae, vae_epoch
from benchmarks.common import Options, environment, spread

NAME = "peers"
ROUNDS = 5
WARMUP_EPOCHS = 1
PEAK_REPS = 3  # matmul repetitions per size, before and after the races
BACKWARDS = 0.9  # a bslrun figure below 0.9 x the previous one has moved backwards
WORKLOADS = (peer_mlp_vae, peer_bnn, peer_maf, peer_conv_vae)
# The targets: (workload, stack, ratio of bslrun to it, at least).
RATIO_TARGETS = (
    ("mlp_vae", "numpyro_loop", 1.4),
    ("mlp_vae", "numpyro_scan", 1.1),
    ("bnn", "numpyro_scan", 1.0),
    ("maf", "flax_optax_scan", 1.0),
)
CONV_TARGET = peer_conv_vae.PYTORCH_EAGER[1]  # images/s: the top of PyTorch eager's range


def race(workload, epochs: int, rounds: int, after_round=lambda: None) -> None:
    """Warm-up epochs, then ``rounds`` timed segments of ``epochs`` epochs per stack;
    ``after_round()`` runs between rounds (a matmul probe)."""
    runners = workload.runners
    for runner in runners:
        runner.train(WARMUP_EPOCHS)
    for r in range(rounds):
        first = r % len(runners)
        for runner in runners[first:] + runners[:first]:
            tick = time.perf_counter()
            runner.train(epochs)  # ends on the epoch's host sync: all work is done
            runner.seconds.append(time.perf_counter() - tick)
        after_round()


def paired(runners: dict, fast: str, slow: str) -> list:
    """Per-round throughput ratios fast/slow (the same examples: slow's time / fast's)."""
    return [s / f for f, s in zip(runners[fast].seconds, runners[slow].seconds, strict=True)]


def stack_stats(workload, epochs: int) -> dict:
    runners = {r.name: r for r in workload.runners}
    examples = workload.examples_per_epoch * epochs
    out = {}
    for name, runner in runners.items():
        finite = [loss for loss in runner.losses if math.isfinite(loss)]
        out[name] = {
            "examples_per_sec": spread([examples / s for s in runner.seconds]),
            "ratio_to_baseline": spread(paired(runners, name, workload.baseline)),
            "seconds_per_round": runner.seconds,
            "compile_s": runner.compile_s,
            "num_params": runner.num_params,
            "epochs_trained": runner.done,
            "first_loss": runner.losses[0],
            "best_loss": min(finite, default=math.nan),
            "final_loss": runner.losses[-1],
            "finite": len(finite) == len(runner.losses) and runner.finite(),
        }
    return out


def gaps(values: dict) -> dict:
    """|value - median| / max(1, |median|) per stack."""
    middle = statistics.median(values.values())
    return {k: abs(v - middle) / max(1.0, abs(middle)) for k, v in values.items()}


def sanity(workload, stats: dict) -> dict:
    first = gaps({k: s["first_loss"] for k, s in stats.items()})
    best = gaps({k: s["best_loss"] for k, s in stats.items()})
    sizes = {k: s["num_params"] for k, s in stats.items()}
    finite = all(s["finite"] for s in stats.values())
    checks = {
        "finite": finite,
        "same_num_params": len(set(sizes.values())) == 1,
        "first_loss_close": finite and max(first.values()) <= workload.first_tolerance,
        "best_loss_close": finite and max(best.values()) <= workload.tolerance,
    }
    return {
        **checks,
        "first_loss_gaps": first,
        "first_loss_tolerance": workload.first_tolerance,
        "best_loss_gaps": best,
        "best_loss_tolerance": workload.tolerance,
        "passed": all(checks.values()),
    }


def workload_result(module, workload, epochs: int, rounds: int) -> dict:
    stats = stack_stats(workload, epochs)
    return {
        "title": workload.title,
        "description": module.__doc__.strip().splitlines()[0],
        "config": {
            **workload.config,
            "examples_per_epoch": workload.examples_per_epoch,
            "epochs_per_round": epochs,
            "rounds": rounds,
            "warmup_epochs": WARMUP_EPOCHS,
        },
        "baseline": workload.baseline,
        "stacks": stats,
        "sanity": sanity(workload, stats),
    }


def add_fraction_of_peak(entry: dict, peak: float) -> dict:
    """The MLP VAE's analytic training FLOPs per image x examples/s, over the peak."""
    flops = vae_epoch.flops_per_example(peer_mlp_vae.model_config(), peer_mlp_vae.DIM)
    for stats in entry["stacks"].values():
        stats["fraction_of_peak"] = stats["examples_per_sec"]["median"] * flops["total"] / peak
    entry["flops_per_example"] = flops
    return entry


def targets(workloads: dict) -> dict:
    out = {}
    for name, other, target in RATIO_TARGETS:
        stacks = workloads[name]["stacks"]
        value = statistics.median(
            b / o
            for b, o in zip(
                stacks["bslrun"]["examples_per_sec"]["reps"],
                stacks[other]["examples_per_sec"]["reps"],
                strict=True,
            )
        )
        out[f"{name}_bslrun_over_{other}"] = {
            "target": target,
            "value": value,
            "met": value >= target,
        }
    conv = workloads["conv_vae"]["stacks"]["bslrun"]["examples_per_sec"]["median"]
    out["conv_vae_bslrun_images_per_sec"] = {
        "target": CONV_TARGET,
        "value": conv,
        "met": conv >= CONV_TARGET,
        "reference": (
            f"PyTorch eager, {peer_conv_vae.PYTORCH_EAGER[0]:.0f}-{CONV_TARGET:.0f} images/s,"
            " an earlier measurement on a 2-core CPU machine (not run here)"
        ),
    }
    return out


def compare(old: dict, workloads: dict, env: dict, config: dict) -> dict:
    """New/old examples/s per workload and stack against an earlier result ``old``."""
    ratios, backwards = {}, []
    for name, entry in workloads.items():
        old_stacks = old["workloads"].get(name, {}).get("stacks", {})
        for stack, stats in entry["stacks"].items():
            if stack not in old_stacks:
                continue
            ratio = (
                stats["examples_per_sec"]["median"]
                / old_stacks[stack]["examples_per_sec"]["median"]
            )
            ratios.setdefault(name, {})[stack] = ratio
            if stack == "bslrun" and ratio < BACKWARDS:
                backwards.append({"workload": name, "stack": stack, "new_over_old": ratio})
    old_env = old.get("environment", {})
    return {
        "timestamp": old.get("timestamp"),
        "same_device": all(old_env.get(k) == env.get(k) for k in ("backend", "device_kind")),
        "same_settings": old.get("config") == config,
        "config": old.get("config"),
        "new_over_old": ratios,
        "moved_backwards": backwards,
        "threshold": BACKWARDS,
    }


def previous(path: Path, workloads: dict, env: dict, config: dict) -> dict | None:
    """``compare`` with the results file at ``path``: None if there is none."""
    if not path.exists():
        return None
    try:
        return {"path": str(path), **compare(json.loads(path.read_text()), workloads, env, config)}
    except (OSError, ValueError, LookupError, TypeError, AttributeError, ArithmeticError) as exc:
        # an old or hand-edited file must not cost the new measurement
        return {"path": str(path), "error": f"unreadable ({type(exc).__name__}: {exc})"}


def peak_result(before: dict, after: dict, probe) -> dict:
    return {
        "peak_flops": max(before["peak_flops"], after["peak_flops"], *probe.rates),
        "protocol": "best of all sizes before and after the races and of a probe at the"
        " best size after every round",
        "probe_size": before["peak_size"],
        "probe_flops": probe.rates,
        "before": before,
        "after": after,
    }


def run(opts: Options) -> dict:
    rounds = opts.reps or ROUNDS
    env = environment()
    peak_before = matmul_peak.measure(reps=PEAK_REPS, seed=opts.seed)
    # A shared machine's speed drifts: a short matmul run after every round as well.
    probe = vae_epoch.Probe(peak_before["peak_size"], opts.seed)
    load = vae_epoch.CpuLoad()
    workloads = {}
    for module in WORKLOADS:
        workload = module.build(opts.seed)
        epochs = opts.epochs or workload.epochs
        race(workload, epochs, rounds, probe.measure)
        workloads[workload.name] = workload_result(module, workload, epochs, rounds)
        del workload  # its device arrays and programs go before the next is built
    cpu_load = load.stop()
    peak = peak_result(peak_before, matmul_peak.measure(reps=PEAK_REPS, seed=opts.seed), probe)
    add_fraction_of_peak(workloads["mlp_vae"], peak["peak_flops"])
    found = targets(workloads)
    config = {"rounds": rounds, "epochs_override": opts.epochs, "seed": opts.seed}
    return {
        "description": (
            "training examples/s of bslrun's fused epoch against plain NumPyro (per-step"
            " loop: the baseline; lax.scan) and hand-written Flax + optax, same models"
        ),
        "config": config,
        "environment": env,
        "cpu_load_while_timed": cpu_load,
        "matmul_peak": peak,
        "workloads": workloads,
        "targets": found,
        "meets_target": all(t["met"] for t in found.values()),
        "previous": previous(opts.results_dir / f"{NAME}.json", workloads, env, config),
        "sanity": {
            "passed": all(w["sanity"]["passed"] for w in workloads.values()),
            "per_workload": {k: w["sanity"]["passed"] for k, w in workloads.items()},
        },
    }


# ---------------------------------------------------------------------------- summary


def _stack_line(name: str, stats: dict) -> str:
    fraction = stats.get("fraction_of_peak")
    peak = f"  {fraction:5.1%} of peak" if fraction is not None else ""
    return (
        f"    {name:<16}{stats['examples_per_sec']['median']:>11,.0f} /s"
        f"  {stats['ratio_to_baseline']['median']:5.2f}x{peak}"
        f"  compile {stats['compile_s']:5.1f} s"
        f"  loss first {stats['first_loss']:.3f} best {stats['best_loss']:.3f}"
    )


def _previous_lines(prev: dict | None) -> list:
    if prev is None:
        return ["  previous: none (first run)"]
    if "error" in prev:
        return [f"  previous: {prev['error']}"]
    where = "same device" if prev["same_device"] else "ANOTHER device: not comparable"
    if not prev["same_settings"]:
        where += f", other settings {prev['config']}"
    bslrun = ", ".join(
        f"{w} {s['bslrun']:.2f}x" for w, s in prev["new_over_old"].items() if "bslrun" in s
    )
    moved = ", ".join(f"{m['workload']} {m['new_over_old']:.2f}x" for m in prev["moved_backwards"])
    return [
        f"  previous ({prev['timestamp']}, {where}): bslrun new/old {bslrun or 'n/a'}",
        f"  moved backwards (bslrun < {prev['threshold']:.0%} of previous): {moved or 'none'}",
    ]


def summarise(result: dict) -> str:
    peak = result["matmul_peak"]["peak_flops"]
    lines = [
        f"{NAME}: {result['config']['rounds']} rounds, {result['environment']['device']};"
        f" float32 matmul peak {peak / 1e9:,.0f} GFLOP/s"
    ]
    for name, entry in result["workloads"].items():
        cfg = entry["config"]
        lines.append(
            f"  {name}: {entry['title']}, {cfg['epochs_per_round']} epoch(s) x"
            f" {cfg['examples_per_epoch']:,} examples per round; x {entry['baseline']};"
            f" sanity {'passed' if entry['sanity']['passed'] else 'FAILED'}"
        )
        lines += [_stack_line(stack, stats) for stack, stats in entry["stacks"].items()]
    lines.append("  targets:")
    for key, t in result["targets"].items():
        unit = " images/s" if "images" in key else "x"
        note = f" (vs {t['reference']})" if "reference" in t else ""
        lines.append(
            f"    {key}: {t['value']:,.2f}{unit} (target {t['target']:g}{unit}):"
            f" {'met' if t['met'] else 'NOT met'}{note}"
        )
    lines += _previous_lines(result["previous"])
    load = result.get("cpu_load_while_timed")
    if load is not None and load["other_processes_cores"] > 0.2:
        lines.append(
            f"  other processes used {load['other_processes_cores']:.2f} cores while timed:"
            " a shared machine, rerun when quiet"
        )
    return "\n".join(lines)
