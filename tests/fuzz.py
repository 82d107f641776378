"""A standing differential fuzz of every op of the op table against native PyTorch.

    python3 tests/fuzz.py --calls 600 --bad 90 --seed 0           # every op, ~4 min
    python3 tests/fuzz.py --ops layer_norm --calls 2000           # one op
    python3 tests/fuzz.py --replay artifacts/fuzz/<case>.pt       # re-run one failure

It needs no code per op: everything comes from each op's ``OpInfo``.

Valid calls, half of them from each source:
- ``property_inputs``: the op's declared argument space (random shapes with 0- and 1-sized
  dims, every optional argument, awkward layouts and extreme values; see ``tensors``), and
- ``batch_inputs`` at a random batch size (0 to 300: sizes that reach the C++ kernels), its
  tensors re-laid out (transposed, offset, strided, channels-last) with their values kept, and
  in half of the calls some values replaced by extremes (inf and nan only for ops whose
  ``extreme_inputs`` says native's answer to them is one thing).

Each call runs in a random dtype of the op's, and is judged output by output and gradient by
gradient (a random upstream gradient), against the reference evaluated in float64 on the same
rounded values (``exact_reference`` where the op has one) and against native in the same
dtype, by flash-attention's rule: where all three are finite, the op's largest error is at most
``ERROR_FACTOR`` times native's plus ``ULPS`` units of the dtype's epsilon times the largest
value; nan and inf may appear only where native or the float64 value has them (or the op's
``inf_allowed_where_native_nan`` allows the limit). A share of the calls (``--compiled``) also
runs under ``torch.compile(fullgraph=True, dynamic=True)`` and is judged the same way.

Bad calls are derived from valid ones and the op's schema: a tensor argument made integer,
bool or complex, moved to another device, given one dim more or less, or passed as a list; a
float argument made nan, inf or negative; an int or int-list argument made a float. Native
(the reference, on the same arguments) decides whether a call is bad: where it raises, the op
must raise an error that names it (``customgrad.<op>`` or ``customgrad::<op>``), eagerly and
compiled; where native answers, so must the op (judged as a valid call), unless the op refuses
it on purpose: its OpInfo's ``deliberate_refusals`` (error messages, each with its reason).
Some mutations are bad by declaration whatever native does (see ``mutations``).

Failures are grouped by op, kind and the output (or error) concerned; for each group the
smallest call seen is saved as a reproducer (``--out``: a ``.pt`` file that ``--replay``
re-runs). The long run isolates each op in a subprocess, so a crash (a signal) is caught and
reported with the op and seed. The default test run runs a quick seed (tests/test_fuzz.py).
"""

from __future__ import annotations

import argparse
import json
import math
import random
import re
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import torch
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).resolve().parent))  # conftest's helpers, run as a script
from conftest import bind_constants  # noqa: E402

from opslib.testing.opinfo import OpInfo, leaves, requiring_grad  # noqa: E402
from opslib.testing.opinfos import OP_TABLE, OPS_BY_NAME

ERROR_FACTOR = 2.0  # flash-attention's k: the op's error at most twice native's ...
ULPS = 4.0  # ... plus a few units of the dtype's epsilon times the largest value
# float64 has no more precise reference: native's error there is estimated from its float32
# error (``_float64_native_error``), and the op may also differ from it by 1e-12 of the
# largest value (a wrong formula is off by far more; a sum of many terms, reordered, by ~1e-15)
FLOAT64_AGREEMENT = 1e-12

SPECIALS = [float("inf"), float("-inf"), float("nan"), 1e4, -1e4, 1e30, -1e30, 1e-30, -1e-30,
            0.0, -0.0, 1000.0, -1000.0, 20.0, -20.0]  # fmt: skip
# Large but finite values, whose products (q·k, p·v) stay finite in float32
MODERATE_SPECIALS = [1e4, -1e4, 1e-30, -1e-30, 0.0, -0.0, 1000.0, -1000.0, 20.0, -20.0]
LAYOUTS = ["contiguous", "transposed", "offset", "strided", "expanded", "channels_last"]


@st.composite
def tensors(draw, shape=None, min_dims=0, finite=False):
    """A float64 tensor in an awkward layout with a mix of ordinary and extreme values
    (``finite``: only MODERATE_SPECIALS, for ops whose native result on inf/nan is not one
    thing: native attention's float32 and float64 kernels disagree there, nan against inf).
    The op table's ``property_inputs`` draw their tensors from it."""
    if shape is None:
        shape = draw(st.lists(st.integers(0, 4), min_size=min_dims, max_size=5))
    shape = list(shape)
    layout = draw(st.sampled_from(LAYOUTS))
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    special_fraction = draw(st.sampled_from([0.0, 0.1, 0.5]))
    scale = draw(st.sampled_from([1.0, 1e-3, 30.0]))

    def values(s):
        base = torch.randn(s, generator=gen, dtype=torch.float64) * scale
        return with_specials(base, special_fraction, MODERATE_SPECIALS if finite else SPECIALS,
                             gen)  # fmt: skip

    if layout == "expanded" and shape:
        return values(shape[:-1] + [1]).expand(shape)
    return relaid(values(shape), layout)


def with_specials(t: torch.Tensor, fraction: float, specials: list[float],
                  gen: torch.Generator) -> torch.Tensor:  # fmt: skip
    """``t`` with about ``fraction`` of its elements replaced by values drawn from ``specials``."""
    mask = torch.rand(t.shape, generator=gen) < fraction
    picks = torch.tensor(specials, dtype=t.dtype)[torch.randint(len(specials), t.shape,
                                                                generator=gen)]  # fmt: skip
    return torch.where(mask, picks, t)


def relaid(t: torch.Tensor, layout: str) -> torch.Tensor:
    """The same values and shape in another memory layout (where the shape allows it)."""
    shape = list(t.shape)
    if layout == "transposed" and t.dim() >= 2:
        return t.transpose(-1, -2).contiguous().transpose(-1, -2)
    if layout == "offset":
        buffer = t.new_empty(t.numel() + 1)
        return buffer[1:].view(shape).copy_(t) if shape else buffer[1:].view(()).copy_(t)
    if layout == "strided" and shape:
        return t.new_empty(shape[:-1] + [2 * shape[-1]])[..., ::2].copy_(t)
    if layout == "channels_last" and t.dim() == 4:
        return t.contiguous(memory_format=torch.channels_last)
    return t.contiguous()


@st.composite
def property_call(draw, info: OpInfo) -> tuple:
    """Arguments for one op (float64 master copies) as its OpInfo draws them."""
    return info.property_inputs(draw, st, tensors)


@st.composite
def batch_call(draw, info: OpInfo) -> tuple:
    """``batch_inputs`` at a random batch size, each tensor re-laid out, and in half of the calls
    with extremes among its floating-point values."""
    rows = draw(st.sampled_from([0, 1, 2, 3, 5, 17, 64, 130, 300]))
    torch.manual_seed(draw(st.integers(0, 2**31 - 1)))
    args = info.batch_inputs(rows, "cpu", torch.float64)
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    specials = SPECIALS if info.extreme_inputs is not None else MODERATE_SPECIALS
    fraction = draw(st.sampled_from([0.0, 0.0, 0.01, 0.2]))
    out = []
    for i, a in enumerate(args):
        if isinstance(a, torch.Tensor):
            if a.is_floating_point() and i not in info.constant_args:
                a = with_specials(a.detach(), fraction, specials, gen)
            a = relaid(a.detach(), draw(st.sampled_from(LAYOUTS)))
        out.append(a)
    return tuple(out)


@dataclass
class Failure:
    """One call that broke the contract: what kind, where, and the call itself."""

    op: str
    kind: str  # "wrong answer", "crash", "unnamed error", "refused a valid call", ...
    where: str  # which output/gradient, or the mutation
    dtype: str
    message: str
    args: tuple
    compiled: bool

    @property
    def key(self) -> str:
        return f"{self.op}--{self.kind}--{self.where}--{self.dtype}".replace(" ", "_")

    @property
    def size(self) -> int:
        return sum(a.numel() for a in self.args if isinstance(a, torch.Tensor))


@dataclass
class Campaign:
    """Counts per op and the smallest failure of each kind."""

    compiled_share: float
    counts: dict[str, Counter] = field(default_factory=dict)
    failures: dict[str, Failure] = field(default_factory=dict)
    failure_counts: Counter = field(default_factory=Counter)

    def count(self, op: str, what: str) -> None:
        self.counts.setdefault(op, Counter())[what] += 1

    def fail(self, failure: Failure) -> None:
        self.count(failure.op, "failures")
        self.failure_counts[failure.key] += 1
        known = self.failures.get(failure.key)
        if known is None or failure.size < known.size:
            self.failures[failure.key] = failure


# ---- running one call ----


def _nonfinite_class(t: torch.Tensor) -> torch.Tensor:
    """0 finite, 1 nan, 2 +inf, 3 -inf."""
    return torch.isnan(t) * 1 + torch.isposinf(t) * 2 + torch.isneginf(t) * 3


def _outputs(fn, args: tuple, grad_seed: int) -> list[torch.Tensor]:
    """The output and the gradient of every input that requires grad, for a fixed random
    upstream gradient (in the output's dtype)."""
    y = fn(*args)
    grad_y = torch.randn(y.shape, generator=torch.Generator().manual_seed(grad_seed),
                         dtype=torch.float64).to(y.dtype)  # fmt: skip
    inputs = requiring_grad(args)
    if not inputs:
        return [y.detach()]
    if y.numel() == 0 or not y.requires_grad:
        return [y.detach(), *[torch.zeros_like(a) for a in inputs]]
    grads = torch.autograd.grad(y, inputs, grad_y, allow_unused=True)
    return [y.detach(), *[torch.zeros_like(a) if g is None else g for a, g in
                          zip(inputs, grads, strict=True)]]  # fmt: skip


def _float64_native_error(info: OpInfo, args: tuple, grad_seed: int) -> list[float] | None:
    """An estimate of native's own float64 error, output by output: against a float64
    reference it measures 0 (native is the reference), so the rule would allow the op only a
    few ulps where the problem is ill-conditioned and every float64 implementation errs more.
    First-order rounding error is the unit roundoff times the problem's condition, so native's
    float32 error on the same values, times eps(float64)/eps(float32), estimates it."""
    constant = info.constant_args
    low = leaves(args, requires_grad=True, dtype=torch.float32, constant=constant)
    try:
        native = _outputs(info.reference, low, grad_seed)
        exact = _outputs(info.exact_reference or info.reference,
                         leaves(low, requires_grad=True, dtype=torch.float64, constant=constant),
                         grad_seed)  # fmt: skip
    except Exception:  # noqa: BLE001
        return None
    ratio = torch.finfo(torch.float64).eps / torch.finfo(torch.float32).eps
    errors = []
    for n, e in zip(native, exact, strict=True):
        finite = torch.isfinite(n) & torch.isfinite(e)
        errors.append((n.double() - e)[finite].abs().max().item() * ratio if finite.any() else 0.0)
    return errors


def judge(
    info: OpInfo,
    ours: list,
    native: list,
    exact: list,
    dtype: torch.dtype,
    cast: tuple,
    native_floor: list[float] | None = None,
) -> list[tuple[str, str]]:
    """(where, message) for every output or gradient that breaks the rule (module docstring);
    ``native_floor``: native's error where it cannot be measured (float64)."""
    names = ["output"] + [f"grad {i}" for i in range(len(ours) - 1)]
    eps = torch.finfo(dtype).eps
    inf_limit_ok = info.inf_allowed_where_native_nan(cast)
    problems = []
    for index, (name, o, n, e) in enumerate(zip(names, ours, native, exact, strict=True)):
        if o.shape != n.shape and o.numel() == n.numel() == 0 and o.dtype == n.dtype:
            continue  # no values: native's empty shapes follow no one rule (docs/guides/limits.md)
        if o.shape != n.shape or o.dtype != n.dtype:
            problems.append((name, f"shape/dtype {list(o.shape)} {o.dtype}, native "
                                   f"{list(n.shape)} {n.dtype}"))  # fmt: skip
            continue
        got, want, want_exact = (
            _nonfinite_class(o),
            _nonfinite_class(n),
            _nonfinite_class(e.to(dtype)),
        )
        allowed = (got == want) | (got == want_exact)
        if inf_limit_ok:
            allowed |= (got >= 2) & torch.isnan(e)
        if not allowed.all():
            bad = ~allowed
            problems.append((name, f"nan/inf at {int(bad.sum())} places where native and "
                                   f"float64 have other values: ours {o[bad].tolist()[:3]}, "
                                   f"native {n[bad].tolist()[:3]}, float64 "
                                   f"{e[bad].tolist()[:3]}"))  # fmt: skip
            continue
        finite = (got == 0) & (want == 0) & torch.isfinite(e)
        if not finite.any():
            continue
        err = (o.double() - e)[finite].abs().max().item()
        native_err = (n.double() - e)[finite].abs().max().item()
        if native_floor is not None:
            native_err = max(native_err, native_floor[index])
        scale = max(1.0, e[finite].abs().max().item())
        if err > ERROR_FACTOR * native_err + max(ULPS * eps, FLOAT64_AGREEMENT * (
                dtype == torch.float64)) * scale:  # fmt: skip
            problems.append((name, f"error {err:.3g} against float64, native's {native_err:.3g}"
                                   f" (largest value {scale:.3g})"))  # fmt: skip
    return problems


def _compiled(info: OpInfo, args: tuple):
    """info.func compiled for calls like ``args``: its non-tensor arguments written into the
    code as constants (``bind_constants``), its tensors taken from each call's arguments."""
    fn, _ = bind_constants(info.func, args)
    compiled = torch.compile(fn, fullgraph=True, dynamic=True, backend="aot_eager")
    return lambda *call: compiled(*(a for a in call if isinstance(a, torch.Tensor)))


def differential(campaign: Campaign, info: OpInfo, args: tuple, dtype: torch.dtype,
                 compiled: bool, grad_seed: int) -> None:  # fmt: skip
    """Run one valid call (float64 master ``args``) in ``dtype`` and judge it."""
    campaign.count(info.name, "calls")
    cast = leaves(args, requires_grad=True, dtype=dtype, constant=info.constant_args)
    native_args = leaves(cast, requires_grad=True, constant=info.constant_args)
    exact_args = leaves(cast, requires_grad=True, dtype=torch.float64, constant=info.constant_args)
    try:
        native = _outputs(info.reference, native_args, grad_seed)
        exact = _outputs(info.exact_reference or info.reference, exact_args, grad_seed)
    except Exception:  # noqa: BLE001  (native refuses this drawn call: not a valid call)
        campaign.count(info.name, "skipped (native refuses)")
        return
    floor = _float64_native_error(info, cast, grad_seed) if dtype == torch.float64 else None
    runs = [("eager", info.func)] + ([("compiled", _compiled(info, cast))] if compiled else [])
    for mode, fn in runs:
        campaign.count(info.name, f"{mode} calls")
        ours_args = leaves(cast, requires_grad=True, constant=info.constant_args)
        try:
            ours = _outputs(fn, ours_args, grad_seed)
        except Exception as error:  # noqa: BLE001
            campaign.fail(Failure(info.name, "refused a valid call", mode, str(dtype),
                                  _first_line(error), args, mode == "compiled"))  # fmt: skip
            continue
        for where, message in judge(info, ours, native, exact, dtype, cast, floor):
            campaign.fail(Failure(info.name, "wrong answer", f"{mode} {where}", str(dtype),
                                  message, args, mode == "compiled"))  # fmt: skip


# ---- bad calls ----


REFUSE, NATIVE, EITHER = "refuse", "native", "refuse or as native"


def mutations(info: OpInfo, args: tuple, rng: random.Random) -> list[tuple[str, tuple, str]]:
    """Calls derived from a valid one by changing one argument, as the schema types it, each
    with what the op must do. REFUSE (naming itself), whatever native does: a floating-point
    argument made integer or complex (native takes an integer tensor in relu; the ops' dtypes
    are floating-point), a non-finite float argument (native computes with eps=inf; the
    contract says refuse), tensors on two devices (native mixes meta and CPU tensors into a
    meta result), a tensor argument given as a Python list or number. EITHER for a bool
    tensor: refuse it, naming itself, or take it as native does (attention's mask is bool).
    NATIVE for the rest: refuse where native refuses, answer as native answers."""
    schema = info.op._schema.arguments
    out = []
    for i, (arg, a) in enumerate(zip(schema, args, strict=False)):
        kind = str(arg.type)

        def put(value, i=i):
            return (*args[:i], value, *args[i + 1 :])

        if isinstance(a, torch.Tensor):
            if a.is_floating_point():
                t = a.detach()
                out += [(f"int64 {arg.name}", put(t.to(torch.int64)), REFUSE),
                        (f"bool {arg.name}", put(t > 0), EITHER),
                        (f"complex {arg.name}", put(t.to(torch.complex64)), REFUSE)]  # fmt: skip
            else:
                out.append((f"float {arg.name}", put(a.to(torch.float32)), NATIVE))
            others = [b for j, b in enumerate(args) if j != i and isinstance(b, torch.Tensor)]
            out += [(f"{arg.name} on meta", put(a.detach().to("meta")),
                     REFUSE if others else NATIVE),
                    (f"{arg.name} with a leading dim more", put(a.detach().unsqueeze(0)), NATIVE),
                    (f"{arg.name} as a list", put(a.detach().tolist()), REFUSE)]  # fmt: skip
            if a.dim() > 0 and a.shape[0] > 0:
                out.append((f"{arg.name} with a dim less", put(a.detach()[0]), NATIVE))
        elif kind in ("float", "Optional[float]") and a is not None:
            out += [(f"{arg.name} {v}", put(v), NATIVE if math.isfinite(v) else REFUSE)
                    for v in (math.nan, math.inf, -1.0)]  # fmt: skip
        elif kind in ("int", "SymInt") and isinstance(a, int):
            out.append((f"{arg.name} 1.5", put(1.5), NATIVE))
        elif kind.startswith("List[int]") or kind.startswith("List[SymInt]"):
            if isinstance(a, (list, tuple)) and a:
                out += [(f"{arg.name} with a float", put([1.5, *a[1:]]), NATIVE),
                        (f"{arg.name} as an int", put(a[0]), NATIVE)]  # fmt: skip
    rng.shuffle(out)
    return out


def _chain_text(error: BaseException) -> str:
    """The messages of an error and of every error it was raised from (dynamo wraps the op's)."""
    text, err = "", error
    while err is not None:
        text += str(err) + "\n"
        err = err.__cause__ or err.__context__
    return text


def _names_op(info: OpInfo, error: BaseException) -> bool:
    text = _chain_text(error)
    return f"{info.namespace}.{info.name}" in text or f"{info.namespace}::{info.name}" in text


def _first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0][:300] if lines else ''}"


def bad_call(campaign: Campaign, info: OpInfo, name: str, args: tuple, compiled: bool,
             policy: str) -> None:  # fmt: skip
    """One mutated call, judged by its policy (``mutations``): the op refuses it naming itself,
    or (where the policy lets native decide and native answers) answers it as a valid call."""
    native = None
    if policy != REFUSE:
        try:
            with torch.no_grad():
                native = info.reference(*args)
        except Exception:  # noqa: BLE001
            pass
    for mode in ["eager"] + (["compiled"] if compiled else []):
        campaign.count(info.name, f"{mode} bad calls")

        def fail(kind: str, message: str, mode: str = mode) -> None:
            campaign.fail(Failure(info.name, kind, f"{mode} {name}", "-", message, args,
                                  mode == "compiled"))  # fmt: skip

        fn = _compiled(info, args) if mode == "compiled" else info.func
        try:
            with torch.no_grad():
                ours = fn(*args)
        except Exception as error:  # noqa: BLE001
            text = _chain_text(error)
            deliberate = any(re.search(p, text) for p in info.deliberate_refusals)
            if native is not None and deliberate and _names_op(info, error):
                campaign.count(info.name, f"{mode} deliberate refusals")
            elif native is not None and policy != EITHER:
                fail("refused what native takes", _first_line(error))
            elif not _names_op(info, error):
                fail("unnamed error", _first_line(error))
            else:
                campaign.count(info.name, f"{mode} bad calls refused")
            continue
        if native is None:
            kind = "took a bad call" if policy == REFUSE else "took what native refuses"
            fail(kind, f"returned {type(ours).__name__}")
            continue
        campaign.count(info.name, f"{mode} bad calls valid after all")
        on_cpu = all(a.device.type == "cpu" for a in args if isinstance(a, torch.Tensor))
        if mode == "eager" and on_cpu:  # a call the mutation left valid: judge it as one
            wide = leaves(args, requires_grad=False, dtype=torch.float64)
            differential(campaign, info, wide, torch.float32, compiled, grad_seed=0)


# ---- a campaign over ops ----


def run_op(campaign: Campaign, info: OpInfo, calls: int, bad: int, seed_value: int) -> None:
    """``calls`` valid calls and ``bad`` bad ones for one op, hypothesis drawing the arguments
    (no shrinking, no database: a failure is recorded, never raised)."""
    rng = random.Random(seed_value)
    # bad calls spread evenly over the valid ones; a call with fewer mutations than its share
    # leaves the rest to the next
    progress = {"valid": 0, "bad": 0}
    conf = settings(max_examples=calls, database=None, deadline=None, phases=[Phase.generate],
                    suppress_health_check=list(HealthCheck))  # fmt: skip

    @conf
    @seed(seed_value)
    @given(source=st.sampled_from(["property", "batch"]), data=st.data(),
           dtype=st.sampled_from(info.dtypes), grad_seed=st.integers(0, 2**16))  # fmt: skip
    def one(source, data, dtype, grad_seed):
        args = data.draw(property_call(info) if source == "property" else batch_call(info))
        compiled = rng.random() < campaign.compiled_share
        differential(campaign, info, args, dtype, compiled, grad_seed)
        progress["valid"] += 1
        due = bad * progress["valid"] // max(calls, 1) - progress["bad"]
        float32_args = leaves(args, requires_grad=False, dtype=torch.float32)
        for name, mutated, policy in mutations(info, float32_args, rng)[: max(due, 0)]:
            progress["bad"] += 1
            compiled = rng.random() < campaign.compiled_share
            bad_call(campaign, info, name, mutated, compiled, policy)

    one()


def save(failure: Failure, out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{failure.key}.pt"
    torch.save(failure.__dict__, path)
    return path


def replay(path: Path) -> None:
    """Re-run a saved failure and print what the judge says now."""
    case = torch.load(path, weights_only=False)
    info = OPS_BY_NAME[case["op"]]
    print(f"{case['op']}: {case['kind']} ({case['where']}, {case['dtype']}): {case['message']}")
    campaign = Campaign(compiled_share=1.0 if case["compiled"] else 0.0)
    if case["kind"] in ("wrong answer", "refused a valid call") and case["dtype"] != "-":
        dtype = getattr(torch, case["dtype"].removeprefix("torch."))
        differential(campaign, info, case["args"], dtype, case["compiled"], 0)
    else:
        policy = REFUSE if case["kind"] == "took a bad call" else NATIVE
        bad_call(campaign, info, case["where"], case["args"], case["compiled"], policy)
    for f in campaign.failures.values():
        print(f"  now: {f.kind} ({f.where}): {f.message}")
    print("  now: passes" if not campaign.failures else "")


COLUMNS = {"eager calls": "valid", "compiled calls": "compiled", "eager bad calls": "mutated",
           "compiled bad calls": "mut. compiled", "eager bad calls refused": "refused",
           "compiled bad calls refused": "ref. compiled",
           "eager deliberate refusals": "deliberate",
           "eager bad calls valid after all": "valid after all",
           "failures": "failures"}  # fmt: skip


def table(counts: dict[str, Counter]) -> str:
    """Counts per op and in total: valid calls (eager, and of them compiled too), mutated calls
    (eager, compiled), those refused as bad calls with the op named (eager, compiled), refused
    by a declared deliberate refusal, or answered as native answers them (eager: judged as
    valid calls), and failures."""
    rows = [f"{'op':<30}" + "".join(f"{title:>16}" for title in COLUMNS.values())]
    totals: Counter = Counter()
    for op, counter in counts.items():
        rows.append(f"{op:<30}" + "".join(f"{counter[c]:>16}" for c in COLUMNS))
        totals.update(counter)
    rows.append(f"{'total':<30}" + "".join(f"{totals[c]:>16}" for c in COLUMNS))
    return "\n".join(rows)


def failure_lines(campaign: Campaign) -> list[str]:
    return [
        f"FAIL x{campaign.failure_counts[key]} {f.op}: {f.kind} ({f.where}, {f.dtype}): {f.message}"
        for key, f in sorted(campaign.failures.items())
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ops", nargs="*", default=[info.name for info in OP_TABLE])
    parser.add_argument("--calls", type=int, default=600, help="valid calls per op")
    parser.add_argument("--bad", type=int, default=90, help="mutated (bad) calls per op")
    parser.add_argument("--compiled", type=float, default=0.05, help="share also compiled")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("artifacts/fuzz"))
    parser.add_argument("--replay", type=Path)
    parser.add_argument("--in-process", action="store_true", help="no subprocess per op")
    args = parser.parse_args()
    if args.replay:
        replay(args.replay)
        return
    if not args.in_process:  # one subprocess per op: a crash is the op's, reported, not ours
        return _run_isolated(args)
    campaign = Campaign(compiled_share=args.compiled)
    for name in args.ops:
        run_op(campaign, OPS_BY_NAME[name], args.calls, args.bad, args.seed)
    for failure in campaign.failures.values():
        save(failure, args.out)
    print("\n".join(failure_lines(campaign)))
    print("COUNTS " + json.dumps({op: dict(c) for op, c in campaign.counts.items()}))
    print(table(campaign.counts))
    sys.exit(1 if campaign.failures else 0)


def _run_isolated(args: argparse.Namespace) -> None:
    start, crashed, failed, counts = time.monotonic(), [], [], {}
    for name in args.ops:
        command = [sys.executable, __file__, "--in-process", "--ops", name, "--calls",
                   str(args.calls), "--bad", str(args.bad), "--compiled", str(args.compiled),
                   "--seed", str(args.seed), "--out", str(args.out)]  # fmt: skip
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        for line in result.stdout.splitlines():
            if line.startswith("FAIL "):
                print(line, flush=True)
            elif line.startswith("COUNTS "):
                counts.update({op: Counter(c) for op, c in json.loads(line[7:]).items()})
        if result.returncode < 0:
            crashed.append(name)
            print(f"CRASH {name}: signal {-result.returncode} (seed {args.seed}); re-run with "
                  f"--in-process --ops {name} --seed {args.seed}")  # fmt: skip
        elif result.returncode == 1:
            failed.append(name)
        elif result.returncode != 0:
            crashed.append(name)
            print(result.stderr[-2000:])
    minutes = (time.monotonic() - start) / 60
    print(table(counts))
    print(
        f"{len(args.ops)} ops in {minutes:.1f} min; failed: {failed or 'none'}; "
        f"crashed: {crashed or 'none'}"
    )
    sys.exit(1 if failed or crashed else 0)


if __name__ == "__main__":
    main()
