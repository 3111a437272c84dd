"""Polar Express: Muon's Newton–Schulz with one minimax (a, b, c) per iteration instead of the fixed quintic
(3.4445, −4.7750, 2.0315) (PR #1344 → #1787, in PR #1855's record `_PE_COEFFS`; arXiv:2505.16932).

Five tuples, from (8.1566, −22.483, 15.879) to (2.3465, −1.7098, 0.4232), at MUON_BACKEND_STEPS=5. Iteration
k uses tuple k; asked for fewer steps the record runs the first ones, asked for more it still runs five (its
comment says the last tuple repeats; its slice does not), so here more than five steps is a configuration
error. The schedule reaches Muon as the param group's "ns_coeffs" (`core.optim.zeropower_via_newtonschulz5`),
set by a wrapper around `pg_make_optimizer`: it applies to whichever Muon makes the matrix group (the
core's, or `muon_eq_r`'s row-normalised one, as in PR #1855). With a schedule the core's iteration computes
c·(A@A), as the record writes it (NS5 keeps the baseline's (c·A)@A): in bf16 the two orders differ by up to 4 %
of the update's largest entry; this order is the record's bit for bit (eager, CPU).
"""

from __future__ import annotations

from typing import Any

from core.hookspecs import hookimpl
from core.optim import Muon
from core.registry import Plugin

# PR #1855 record, train_gpt.py `_PE_COEFFS`.
PE_COEFFS = (
    (8.156554524902461, -22.48329292557795, 15.878769915207462),
    (4.042929935166739, -2.808917465908714, 0.5000178451051316),
    (3.8916678022926607, -2.772484153217685, 0.5060648178503393),
    (3.285753657755655, -2.3681294933425376, 0.46449024233003106),
    (2.3465413258596377, -1.7097828382687081, 0.42323551169305323),
)


class PolarExpress(Plugin):
    name = "polar_express"
    family = "training"
    summary = "Muon Newton-Schulz with Polar Express per-iteration minimax coefficients (5 steps, PR #1344/#1855)."
    sources = ("openai/parameter-golf#1344", "openai/parameter-golf#1787", "openai/parameter-golf#1855",
               "arXiv:2505.16932")
    test_settings = {"polar_express": {}}

    @classmethod
    def check_config(cls, cfg: Any, core: Any) -> list[str]:
        if core.muon_backend_steps > len(PE_COEFFS):
            return [f"polar_express: core.muon_backend_steps (MUON_BACKEND_STEPS) must be <= {len(PE_COEFFS)}, "
                    f"the length of the coefficient schedule; got {core.muon_backend_steps}"]
        return []

    @hookimpl(wrapper=True)
    def pg_make_optimizer(self, group: str, params: list, config):
        opt = yield
        if isinstance(opt, Muon):
            for g in opt.param_groups:
                g["ns_coeffs"] = PE_COEFFS
        return opt

    @hookimpl
    def pg_report(self, run, fields) -> None:
        fields["muon_ns_coeffs"] = "polar_express"
