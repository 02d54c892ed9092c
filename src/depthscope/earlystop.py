"""Early stop of collapsed runs: the policy, its rule, and its replay on stored full-budget runs.

The thesis (section 5.2) finds that failed runs end with the output layer's VNI near 1 (min 0.9029)
and reads collapse as a state training does not leave. A run whose output VNI stays above a
threshold for several epochs can then be stopped as failed instead of training to the end of its
budget, which is where the failed runs' compute goes (successful runs already stop at the target).

* :class:`EarlyStop` is the policy: ``output VNI > vni for epochs consecutive epochs``. It is
  **off** unless asked for (the thesis' protocol trains every run to its budget); the engine
  (:func:`depthscope.train.train_group`, :func:`depthscope.train.train_reference`) applies it
  after every epoch, and a run it stops stores the mark ``early_stop_epoch`` (a measurement) and
  the policy in its spec (``early_stop_vni``, ``early_stop_epochs``), so no stopped run can pass
  for a run of the thesis' protocol.
* :func:`stop_epoch` is the rule on one run's per-epoch record: the engine and the replay agree
  with it (tests/test_earlystop.py).
* :func:`trajectories` reads the per-epoch output VNI, accuracy and outcome of every run of a
  sweep or of ``fig5`` from the store; :func:`replay` applies the rule for each (threshold,
  epochs) pair and counts the runs it would stop, the stopped runs that would later have
  succeeded (false stops), and the compute it would save (``scripts/earlystop_replay.py`` prints
  the table; docs/sweeps.md, "Stopping collapsed runs early", has the measured one).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence

#: the spec fields the policy adds to a run (present only when the policy is on)
SPEC_FIELDS = ("early_stop_vni", "early_stop_epochs")
#: the measurement a stopped run stores: the epoch (1-based) after which the policy stopped it
STOP_QUANTITY = "early_stop_epoch"
#: how the policy is written on the command line and in a config file
FORMAT = "VNI:EPOCHS (e.g. 0.99:5: stop once the output VNI is > 0.99 after 5 consecutive epochs), or off"


@dataclass(frozen=True)
class EarlyStop:
    """Stop a run as failed after epoch t when its output layer's VNI R_sq (eq. 3.5, the probe batch,
    measured after each epoch) was > ``vni`` after each of the epochs t - ``epochs`` + 1, ..., t,
    t < max_epochs, and the run did not reach the target at t (the success rule is checked first).

    A VNI that is undefined (every output node constant: tr C = 0) is not above the threshold: it
    ends a streak. Stopping after the last epoch saves nothing, so the policy never marks a run there.
    """

    vni: float = 0.99
    epochs: int = 5

    def __post_init__(self) -> None:
        v = self.vni
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not (0.0 < v < 1.0):
            raise ValueError(f"early stop: the VNI threshold must be a number in (0, 1) (VNI lies in [1/N, 1]), "
                             f"got {v!r}")
        e = self.epochs
        if isinstance(e, bool) or not isinstance(e, int) or e < 1:
            raise ValueError(f"early stop: the epoch count must be an integer >= 1, got {e!r}")
        object.__setattr__(self, "vni", float(v))

    def text(self) -> str:
        """'output VNI > 0.99 for 5 consecutive epochs'."""
        return f"output VNI > {self.vni:g} for {self.epochs} consecutive epoch{'s' if self.epochs != 1 else ''}"

    def spec_fields(self) -> dict:
        """The fields a run under this policy carries in its stored spec."""
        return {"early_stop_vni": self.vni, "early_stop_epochs": self.epochs}

    def to_config(self) -> str:
        """The policy as written in a config file or on the command line ('0.99:5')."""
        return f"{self.vni:g}:{self.epochs}"


def parse_early_stop(value: Any) -> EarlyStop | None:
    """The policy ``value`` stands for: None / "off" / False -> None (off); "VNI:EPOCHS" (e.g. "0.99:5");
    a table {vni = 0.99, epochs = 5}; an :class:`EarlyStop`. Anything else: a one-line ValueError."""
    if value is None or value is False:
        return None
    if isinstance(value, EarlyStop):
        return value
    if isinstance(value, str):
        text = value.strip()
        if text.lower() in ("off", "none", ""):
            return None
        parts = text.split(":")
        if len(parts) != 2:
            raise ValueError(f"early_stop must be {FORMAT}; got {value!r}")
        try:
            vni = float(parts[0])
        except ValueError:
            raise ValueError(f"early_stop must be {FORMAT}; got {value!r} (VNI is not a number)") from None
        try:
            epochs = int(parts[1])
        except ValueError:
            raise ValueError(f"early_stop must be {FORMAT}; got {value!r} (EPOCHS is not an integer)") from None
        if not math.isfinite(vni):
            raise ValueError(f"early_stop must be {FORMAT}; got {value!r}")
        return EarlyStop(vni, epochs)
    if isinstance(value, Mapping):
        if set(value) != {"vni", "epochs"}:
            raise ValueError(f"early_stop as a table needs exactly the keys vni and epochs, got {sorted(value)}")
        return EarlyStop(value["vni"], value["epochs"])
    raise ValueError(f"early_stop must be {FORMAT}; got {value!r}")


def policy_of(spec: Mapping[str, Any]) -> EarlyStop | None:
    """The policy a stored run's spec records (None: the run trained without one)."""
    if spec.get("early_stop_vni") is None:
        return None
    return EarlyStop(spec["early_stop_vni"], spec["early_stop_epochs"])


def stop_epoch(vni_out: Sequence[float], accuracies: Sequence[float], target: float, policy: EarlyStop,
               max_epochs: int) -> int | None:
    """The epoch t (1-based) after which ``policy`` stops a run, or None; the rule of :class:`EarlyStop`.

    ``vni_out[e - 1]`` and ``accuracies[e - 1]`` are the output VNI and the training accuracy after epoch
    e, for the epochs the run completed. Epochs are taken in order; the first whose accuracy reaches
    ``target`` ends the run as a success (None: the policy never stops a successful run at or after
    its success), else a streak of ``policy.epochs`` VNI values > ``policy.vni`` ending at t < max_epochs
    stops it.
    """
    streak = 0
    for t, (v, a) in enumerate(zip(vni_out, accuracies), 1):
        if a >= target:
            return None
        streak = streak + 1 if v > policy.vni else 0  # NaN (undefined VNI) is not > vni: the streak ends
        if streak >= policy.epochs and t < max_epochs:
            return t
    return None


def stop_reason(policy: EarlyStop, epoch: int, max_epochs: int, accuracy: float, target: float) -> str:
    """The reason a run stopped by ``policy`` carries (after its failure kind, in the store)."""
    return (f"early stop after epoch {epoch} of {max_epochs}: {policy.text()} (training accuracy "
            f"{accuracy:.4f} below target {target})")


# ---------------------------------------------------------------------------
# Replay on stored full-budget runs
# ---------------------------------------------------------------------------
@dataclass
class Trajectory:
    """One stored run, as the rule sees it: per-epoch output VNI and training accuracy, and its outcome."""

    key: str
    spec: dict
    seed: int
    vni_out: list[float]  # after epochs 1..len (the epochs it completed)
    accuracy: list[float]
    success: bool
    diverged: bool
    steps: int  # updates it took
    steps_per_epoch: int
    failure: str | None = None  # depthscope.train.failure_kind of the stored run
    extra: dict = field(default_factory=dict)

    @property
    def max_epochs(self) -> int:
        return int(self.spec["max_epochs"])

    def step_flops(self, in_features: int = 784) -> float:
        """FLOP of one update of this run: 6 x batch x (in N + (L - 1) N^2 + N classes) (forward 2, backward 4
        per multiply-add of the weights)."""
        L, N, B = self.spec["depth"], self.spec["width"], self.spec["batch_size"]
        c = self.spec.get("classes", 10)
        return 6.0 * B * (in_features * N + (L - 1) * N * N + N * c)


def _steps_per_epoch(spec: Mapping[str, Any], steps: int | None, epochs: int, diverged: bool) -> int | None:
    n = spec.get("n_train")
    if n:
        return math.ceil(int(n) / int(spec["batch_size"]))
    if steps is not None and epochs and not diverged:  # the whole split: its size is not in the spec
        return steps // epochs
    return None


def trajectories(store, experiment: str, **where: Any) -> list[Trajectory]:
    """Every finished run of ``experiment`` trained without the policy (spec fields equal to ``where``),
    with its output VNI after each completed epoch (the ``vni`` trace's last layer at the epoch's last
    step), its accuracy per epoch and its outcome. Runs stored as ``error`` (crashes) and runs trained
    under a policy are left out (a stopped run's later epochs were never trained). Updates per epoch are
    ceil(n_train / batch_size); on a whole split (n_train None) they are read off the runs that did not
    diverge (steps / epochs), and a diverged run takes them from a run on the same data."""
    from .train import failure_kind

    units = {}
    for u in store.units(experiment):
        if u.status == "error" or policy_of(u.spec) is not None:
            continue
        if all(u.spec.get(k) == v for k, v in where.items()):
            units[u.key] = u
    acc: dict[str, dict[int, float]] = {k: {} for k in units}
    vni: dict[str, dict[int, float]] = {k: {} for k in units}
    out_vni: dict[str, float] = {}
    scalars: dict[str, dict[str, float]] = {k: {} for k in units}
    for row in store.rows(experiment, "train_accuracy"):
        if row["key"] in acc and row["step"] is not None:
            acc[row["key"]][row["step"]] = row["value"]
    for depth in sorted({u.spec["depth"] for u in units.values()}):  # the output layer's rows only, per depth
        for row in store.rows(experiment, "vni", depth=depth, layer=depth):
            if row["key"] in units and row["step"] is not None:
                vni[row["key"]][row["step"]] = row["value"]
    for row in store.rows(experiment, "vni_final"):
        u = units.get(row["key"])
        if u is not None and row["layer"] == u.spec["depth"]:
            out_vni[row["key"]] = row["value"]
    for q in ("success", "diverged", "steps"):
        for row in store.rows(experiment, q):
            if row["key"] in scalars:
                scalars[row["key"]][q] = row["value"]
    out = []
    found = []
    known: dict[tuple, int] = {}  # (dataset, split, batch_size) -> updates per epoch, from runs that did not diverge
    for key, u in units.items():
        s = scalars[key]
        if "success" not in s or "steps" not in s:
            continue  # not a training run's record
        epochs = sorted(acc[key])
        success, diverged, steps = s["success"] >= 0.5, s.get("diverged", 0.0) >= 0.5, int(s["steps"])
        spe = _steps_per_epoch(u.spec, steps, len(epochs), diverged)
        data = (u.spec.get("dataset"), u.spec.get("split"), u.spec.get("n_train"), u.spec["batch_size"])
        if spe is not None:
            known.setdefault(data, spe)
        found.append((key, u, s, epochs, success, diverged, steps, spe, data))
    for key, u, s, epochs, success, diverged, steps, spe, data in found:
        spe = spe if spe is not None else known.get(data)  # a diverged run on a whole split: its neighbours'
        if spe is None:
            continue
        accs = [acc[key][e] for e in epochs]
        # the trace has the VNI at every epoch's last step (and, with vni_dense_steps, at early steps too);
        # NaN (undefined: constant output nodes) is not stored, and reads as NaN here
        v = [vni[key].get(e * spe, float("nan")) for e in epochs]
        kind = failure_kind(success, diverged, out_vni.get(key), accs)
        out.append(Trajectory(key, dict(u.spec), u.seed, v, accs, success, diverged, steps, spe, kind))
    return out


@dataclass
class ReplayRow:
    """What one policy would have done to a set of stored full-budget runs."""

    policy: EarlyStop
    runs: int
    stopped: int  # runs the rule stops before their budget ends
    false_stops: int  # of those, runs that went on to reach the target
    later_diverged: int  # of those, runs that later diverged (a failure either way)
    stopped_kinds: dict  # failure kind of the stopped runs at their full budget
    failed: int  # runs that failed at the full budget (diverged included)
    epochs_total: float  # epochs all runs took (partial epochs of diverged runs as fractions)
    epochs_saved: float
    steps_total: int
    steps_saved: int
    flops_total: float
    flops_saved: float
    median_stop_epoch: float
    mean_stop_epoch: float = float("nan")
    false_stop_keys: list = field(default_factory=list)

    @property
    def steps_share(self) -> float:
        return self.steps_saved / self.steps_total if self.steps_total else float("nan")

    @property
    def flops_share(self) -> float:
        return self.flops_saved / self.flops_total if self.flops_total else float("nan")

    @property
    def failed_share(self) -> float:
        """The share of the failed runs the rule stops (false stops, runs that succeeded, left out)."""
        return (self.stopped - self.false_stops) / self.failed if self.failed else float("nan")


def replay(runs: Iterable[Trajectory], policies: Iterable[EarlyStop]) -> list[ReplayRow]:
    """Apply each policy's :func:`stop_epoch` to every run's stored record: a run stopped after epoch t
    would have taken t x steps_per_epoch updates instead of the ``steps`` it took; it is a false stop if
    it succeeded (at an epoch after t: the rule never fires at or after a success)."""
    runs = list(runs)
    out = []
    for pol in policies:
        stopped = false = later_div = 0
        kinds: dict[str, int] = {}
        ep_tot = ep_saved = 0.0
        st_tot = st_saved = 0
        fl_tot = fl_saved = 0.0
        stops: list[int] = []
        false_keys: list[str] = []
        for r in runs:
            f = r.step_flops()
            ep_tot += r.steps / r.steps_per_epoch
            st_tot += r.steps
            fl_tot += r.steps * f
            t = stop_epoch(r.vni_out, r.accuracy, float(r.spec["target_accuracy"]), pol, r.max_epochs)
            if t is None:
                continue
            stopped += 1
            stops.append(t)
            saved = r.steps - t * r.steps_per_epoch
            st_saved += saved
            ep_saved += saved / r.steps_per_epoch
            fl_saved += saved * f
            if r.success:
                false += 1
                false_keys.append(r.key)
            later_div += r.diverged
            k = r.failure or "success"
            kinds[k] = kinds.get(k, 0) + 1
        stops.sort()
        med = float(stops[len(stops) // 2]) if len(stops) % 2 else (
            (stops[len(stops) // 2 - 1] + stops[len(stops) // 2]) / 2 if stops else float("nan"))
        out.append(ReplayRow(pol, len(runs), stopped, false, later_div, kinds,
                             sum(not r.success for r in runs), ep_tot, ep_saved, st_tot, st_saved, fl_tot,
                             fl_saved, med, sum(stops) / len(stops) if stops else float("nan"), false_keys))
    return out


def longest_streak(runs: Iterable[Trajectory], vni: float, *, successful: bool = True) -> int:
    """The most consecutive epochs with output VNI > ``vni`` in any run of ``runs`` that succeeded
    (``successful``) or failed, counting only epochs before the one that reached the target: a rule needing
    more epochs than this stops none of the successful runs (the margin of a rule's zero false stops)."""
    best = 0
    for r in runs:
        if r.success != successful:
            continue
        n = len(r.vni_out) - 1 if r.success else len(r.vni_out)  # the success epoch itself never counts
        streak = 0
        for v in r.vni_out[:n]:
            streak = streak + 1 if v > vni else 0
            best = max(best, streak)
    return best


def budget_fraction(failed: float, succeeded: float, success_epochs: float, max_epochs: int,
                    stopped_share: float = 0.0, stop_epoch: float = 0.0) -> float:
    """The share of the every-run-to-max_epochs budget a study uses:
    (F ((1 - s) E + s t) + S e_s) / ((F + S) E), with F failed runs (each trains E = max_epochs epochs unless
    the policy stops it), S successful runs (each stops at the target after e_s epochs on average), s the share
    of the failed runs the policy stops and t their mean stop epoch (s = 0: no policy)."""
    if not (0.0 <= stopped_share <= 1.0):
        raise ValueError(f"stopped_share must be in [0, 1], got {stopped_share!r}")
    work = failed * ((1.0 - stopped_share) * max_epochs + stopped_share * stop_epoch) + succeeded * success_epochs
    return work / ((failed + succeeded) * max_epochs)


def bound_seconds(step_seconds: Mapping[int, float], depths: Sequence[int], runs_per_depth: int,
                  steps_per_run: int) -> tuple[float, float, float]:
    """(seconds, t0, t1): runs_per_depth x steps_per_run x sum over ``depths`` of t(L), the time when every
    run trains its whole budget, with t(L) = t0 + L t1 fitted by least squares to the measured seconds per
    member-step ``step_seconds`` {depth: seconds} (docs/training.md, "Wall time of the paper preset")."""
    if len(step_seconds) < 2:
        raise ValueError(f"need step times at two depths or more to fit t(L) = t0 + L t1, got {dict(step_seconds)}")
    xs = [float(d) for d in step_seconds]
    ys = [float(step_seconds[d]) for d in step_seconds]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    t1 = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)
    t0 = my - t1 * mx
    return runs_per_depth * steps_per_run * sum(t0 + t1 * d for d in depths), t0, t1


def bound_flops(depths: Sequence[int], width: int, runs_per_depth: int, steps_per_run: int, batch: int = 100,
                in_features: int = 784, classes: int = 10) -> float:
    """runs_per_depth x steps_per_run x sum over ``depths`` of 6 B (in N + (L - 1) N^2 + N classes): the FLOP
    of a study in which every run trains its whole budget (forward 2, backward 4 per multiply-add)."""
    return float(runs_per_depth * steps_per_run * sum(
        6 * batch * (in_features * width + (d - 1) * width * width + width * classes) for d in depths))


def policy_grid(vnis: Sequence[float], epochs: Sequence[int]) -> list[EarlyStop]:
    """Every (threshold, epochs) pair as a policy, thresholds outermost."""
    return [EarlyStop(v, e) for v in vnis for e in epochs]


def recommend(rows: Sequence[ReplayRow]) -> ReplayRow | None:
    """The safest of the rules with no false stop that saves the most: among rows with 0 false stops whose
    neighbours (the same threshold with one epoch fewer, or the next lower threshold with the same epochs)
    also have 0, the one with the largest FLOP share saved; None if no row qualifies."""
    by = {(r.policy.vni, r.policy.epochs): r for r in rows}
    vnis = sorted({r.policy.vni for r in rows})
    eps = sorted({r.policy.epochs for r in rows})
    ok = []
    for r in rows:
        if r.false_stops:
            continue
        i, j = vnis.index(r.policy.vni), eps.index(r.policy.epochs)
        near = [by.get((vnis[i - 1], r.policy.epochs)) if i > 0 else None,
                by.get((r.policy.vni, eps[j - 1])) if j > 0 else None]
        if all(n is None or n.false_stops == 0 for n in near):
            ok.append(r)
    return max(ok, key=lambda r: (r.flops_saved, -r.policy.epochs, r.policy.vni), default=None)


def table(rows: Sequence[ReplayRow]) -> str:
    """The replay as a markdown table (docs/sweeps.md)."""
    head = ("| rule | runs stopped | of the failed runs | false stops (later succeeded) | later diverged "
            "| stopped runs' kind at full budget | median stop epoch | epochs saved | updates saved "
            "| compute (FLOP) saved |\n| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    lines = [head]
    for r in rows:
        kinds = ", ".join(f"{k} {v}" for k, v in sorted(r.stopped_kinds.items(), key=lambda kv: -kv[1])) or "-"
        med = "-" if math.isnan(r.median_stop_epoch) else f"{r.median_stop_epoch:g}"
        lines.append(f"| {r.policy.text()} | {r.stopped} / {r.runs} | {r.stopped - r.false_stops} / {r.failed} "
                     f"({100 * r.failed_share:.0f} %) | {r.false_stops} | {r.later_diverged} | {kinds} | {med} "
                     f"| {r.epochs_saved:.0f} of {r.epochs_total:.0f} | {100 * r.steps_share:.1f} % "
                     f"| {100 * r.flops_share:.1f} % |")
    return "\n".join(lines)
