"""The original model's training compute, resolved as the Guidelines ask: the one place it is done.

Guidelines C(2025) 5045, §3.2 para 64: the fallback thresholds (one third of 1e23, or of 1e25 for an original with
systemic risk) apply only when the modifier "cannot be expected to know this value … and cannot estimate it (see
the Annexes A.1 and A.2)". So, in this order, each step recorded in ``trail``:

1. a figure the user gives (``--pretrain-flops``, ``PretrainFlops``, ``pretrain_flops``);
2. a figure the developer reported (``reported_flops`` in meter/data/pretrain_compute.json);
3. an estimate by Annex A.2 from the published facts of that file:
   - architecture-based (A.2.2, para 132): C ≈ 6·P·D, P the parameters (the *active* parameters of an MoE model),
     D the pretraining tokens;
   - hardware-based (A.2.1, para 126): C = N·L·H·U from the published GPU-hours, the chip's peak H and the
     Guidelines' utilisation U = 50 % (Annex A.3, paras 138 and 144; H100 989 TFLOP/s, A100 300 TFLOP/s as there);
   when both are possible, the lower is used: a lower original compute gives a lower threshold (conservative for
   the modifier), and the other is kept in ``inputs``;
4. only then the fallback, unknown compute.

Every figure carries its value, basis, method, inputs, source, date and stated uncertainty. This is not legal
advice.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from meter.errors import MeterError
from meter.policy.thresholds import SYSTEMIC_RISK_FLOPS, check_flops, exact

Basis = Literal["user", "reported", "estimated", "unknown"]

UTILISATION = 0.5  # Annex A.3, paras 138 and 144: "GPU utilisation of 50%"

# Peak dense BF16 throughput per chip as the data file names them. H100 and A100 as the Guidelines' own worked
# examples take them (Annex A.3 paras 144 and 138); the others from the vendors' datasheets.
PEAKS: dict[str, tuple[float, str]] = {
    "H100-80GB": (989e12, "Guidelines Annex A.3 para 144 (H100: 989 TFLOP/s)"),
    "H800": (989e12, "NVIDIA H800 SXM: the H100's tensor throughput (989 TFLOP/s dense BF16)"),
    "A100-40GB": (300e12, "Guidelines Annex A.3 para 138 (A100: 300 TFLOP/s)"),
    "A100-80GB": (300e12, "Guidelines Annex A.3 para 138 (A100: 300 TFLOP/s)"),
    "TPUv4": (275e12, "Google Cloud TPU v4 documentation: 275 TFLOP/s BF16 per chip"),
    "TPUv5e": (197e12, "Google Cloud TPU v5e documentation: 197 TFLOP/s BF16 per chip"),
    "TPUv5p": (459e12, "Google Cloud TPU v5p documentation: 459 TFLOP/s BF16 per chip"),
}

METHODS = {
    "user": "given by the user",
    "reported": "reported by the developer",
    "6PD": "architecture-based estimate C ≈ 6·P·D (Guidelines Annex A.2.2, para 132)",
    "NLHU": "hardware-based estimate C = N·L·H·U, U = 50 % (Guidelines Annex A.2.1, para 126; A.3 paras 138, 144)",
    "none": "not known and not estimable from published facts: fallback (Guidelines §3.2, para 64)",
}
UNCERTAINTY = {
    "user": "as given by the user",
    "reported": "as reported by the developer",
    "6PD": "6·P·D leaves out attention and is valid for large dense transformers (para 132, footnote 13); the "
    "Guidelines accept estimates within 30 % (para 123)",
    "NLHU": "the 50 % utilisation is the Guidelines' assumption, not a measurement: real utilisation of large "
    "pretraining runs is often 30–50 %, so the estimate may be high by up to about 1.7×",
    "none": "the original's compute is unknown",
}


@dataclass(frozen=True)
class OriginalCompute:
    """The original model's training compute and everything it rests on."""

    flops: float | None
    basis: Basis
    source: str = ""
    systemic_risk: bool | None = None  # None: derived from the compute when known
    method: str = ""
    inputs: dict[str, Any] = field(default_factory=dict, hash=False)
    date: str | None = None
    uncertainty: str = ""
    trail: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.flops is not None:
            check_flops(self.flops, "original (pretraining) compute")
            if self.flops == 0:
                raise MeterError("original (pretraining) compute must be positive: use basis 'unknown' instead")
        if (self.flops is None) != (self.basis == "unknown"):
            raise MeterError("original compute: give a figure with a basis, or none with basis 'unknown'")
        if not self.method:
            object.__setattr__(self, "method", METHODS["none" if self.basis == "unknown" else self.basis])

    @property
    def is_systemic_risk(self) -> bool:
        if self.systemic_risk is not None:
            return self.systemic_risk
        return self.flops is not None and exact(self.flops) > exact(SYSTEMIC_RISK_FLOPS)

    def to_dict(self) -> dict[str, Any]:
        return {
            "flops": self.flops,
            "basis": self.basis,
            "method": self.method,
            "inputs": dict(self.inputs),
            "source": self.source,
            "date": self.date,
            "uncertainty": self.uncertainty,
            "systemic_risk": self.is_systemic_risk,
            "trail": list(self.trail),
        }


# --------------------------------------------------------------------------------------------------------------
# Annex A.2: the two estimates


def six_pd(parameters: float, tokens: float) -> float:
    """Architecture-based estimate (Annex A.2.2): 6 · P · D."""
    return 6 * float(parameters) * float(tokens)


def nlhu(gpu_hours: float, chip: str, utilisation: float = UTILISATION) -> float:
    """Hardware-based estimate (Annex A.2.1): N·L (GPU-seconds) · H (peak FLOP/s) · U."""
    if chip not in PEAKS:
        raise MeterError(f"no peak throughput for chip {chip!r}: use one of {', '.join(PEAKS)}")
    return float(gpu_hours) * 3600 * PEAKS[chip][0] * utilisation


def estimates(row: dict[str, Any]) -> dict[str, tuple[float, dict[str, Any]]]:
    """The Annex A.2 estimates a row's published facts allow: method -> (FLOP, inputs)."""
    out: dict[str, tuple[float, dict[str, Any]]] = {}
    tokens = row.get("tokens")
    active = row.get("active_parameters")
    parameters = active or row.get("parameters")
    if tokens and parameters:
        inputs = {"tokens": tokens, "parameters": parameters}
        if active:
            inputs["parameters_are"] = "active per token (MoE), as the Guidelines' 6·P·D is for the compute per token"
        out["6PD"] = (six_pd(parameters, tokens), inputs)
    if row.get("gpu_hours") and row.get("chip") in PEAKS:
        chip = row["chip"]
        peak, peak_source = PEAKS[chip]
        inputs = {"gpu_hours": row["gpu_hours"], "chip": chip, "peak_flops": peak, "peak_source": peak_source,
                  "utilisation": UTILISATION}  # fmt: skip
        out["NLHU"] = (nlhu(row["gpu_hours"], chip), inputs)
    return out


# --------------------------------------------------------------------------------------------------------------
# Resolution


def resolve_original(
    model_id: str | None,
    given: float | str | None = None,
    *,
    systemic_risk: bool | None = None,
    label: str = "--pretrain-flops",
) -> OriginalCompute:
    """The original's compute: given > reported > estimated > unknown. ``label`` names the user's input in errors.

    ``systemic_risk``: True when the user says the original is a GPAI model with systemic risk; None derives it
    from the compute (above 1e25).
    """
    from meter.engine.catalog import original_facts

    trail: list[str] = []
    if given is not None and str(given).strip() != "":
        flops = check_flops(given, label)
        if flops == 0:
            raise MeterError(f"{label} must be positive: leave it empty when the original's compute is unknown")
        return OriginalCompute(flops, "user", f"given as {label}", systemic_risk, METHODS["user"],
                               {}, None, UNCERTAINTY["user"], (f"given as {label}",))  # fmt: skip
    trail.append(f"no figure given ({label})")
    facts = original_facts(model_id) if model_id else None
    if facts is None:
        trail.append(f"{model_id or 'the model'} is not in the bundled table of published facts")
        return _unknown(trail, systemic_risk, f"{model_id}: not in the bundled table")
    row, note = facts
    where = f"{row['id']}: {row['source']}" + (f" ({note})" if note else "")
    if row.get("reported_flops"):
        trail.append(f"reported by the developer: {row['reported_flops']:.3g} FLOP")
        return OriginalCompute(float(row["reported_flops"]), "reported", where, systemic_risk, METHODS["reported"],
                               _facts(row), row["date"], UNCERTAINTY["reported"], tuple(trail))  # fmt: skip
    trail.append("no compute reported by the developer")
    found = estimates(row)
    if not found:
        trail.append("no token count or GPU-hours published: not estimable")
        return _unknown(trail, systemic_risk, where, row.get("date"))
    method = min(found, key=lambda m: found[m][0])
    flops, inputs = found[method]
    for m, (value, _) in found.items():
        trail.append(f"estimated by {m}: {value:.3g} FLOP")
    if len(found) > 1:
        other = next(m for m in found if m != method)
        trail.append(f"used {method}, the lower: a lower original compute gives a lower threshold (conservative)")
        if found[other][0] > 1.3 * flops:
            trail.append(
                f"the two estimates differ by more than the Guidelines' 30 % margin (para 123): {other} gives "
                f"{found[other][0] / flops:.1f}× as much; give the figure you can justify with --pretrain-flops"
            )
        inputs = {**inputs, "alternative": {"method": other, "flops": found[other][0], **found[other][1]}}
    return OriginalCompute(flops, "estimated", where, systemic_risk, METHODS[method], inputs, row["date"],
                           UNCERTAINTY[method], tuple(trail))  # fmt: skip


def _facts(row: dict[str, Any]) -> dict[str, Any]:
    keys = ("parameters", "active_parameters", "tokens", "gpu_hours", "chip")
    return {k: row[k] for k in keys if row.get(k) is not None}


def _unknown(trail: list[str], systemic_risk: bool | None, source: str, date: str | None = None) -> OriginalCompute:
    trail.append("fallback threshold (Guidelines §3.2, para 64)")
    return OriginalCompute(None, "unknown", source, systemic_risk, METHODS["none"], {}, date, UNCERTAINTY["none"],
                           tuple(trail))  # fmt: skip
