"""TOK.BPB static checks: no hard-coded bytes/token constants, a consistent byte denominator, sidecar evidence."""

from __future__ import annotations

import math
import re

from validator.rules.base import ERROR, FAIL, INFO, PASS, SKIP, WARN, Finding, FolderContext, Rule

CONST_BPT = re.compile(r"(?:math\.)?log\(2(?:\.0)?\)\s*\*\s*\d+\.\d+|/\s*\d+\.\d+\s*/\s*(?:math\.)?log\(2")
TOKENIZER_FILES = (".model", ".vocab", ".meta.npz")
REL_TOL = 2e-3


def bytes_per_token(val_loss: float, val_bpb: float) -> float:
    """Bytes per token implied by a (loss in nats/token, bpb) pair."""
    return val_loss / (val_bpb * math.log(2))


def check_bpb(ctx: FolderContext) -> list[Finding]:
    r = RULES[0]
    out: list[Finding] = []
    src = ctx.script_source
    if src is not None:
        for no, line in enumerate(src[0].splitlines(), start=1):
            if CONST_BPT.search(line) and not line.lstrip().startswith("#"):
                out.append(r.finding(FAIL, "hard-coded bytes-per-token constant in the bpb formula",
                                     file="train_gpt.py", line=no, found=line.strip()[:100]))
    ratios = []
    for lg in ctx.scoring:
        fin = lg.final()
        if fin is not None and fin.val_bpb > 0 and fin.val_loss > 0:
            ratios.append((bytes_per_token(fin.val_loss, fin.val_bpb), lg))
    if len(ratios) > 1:
        lo, hi = min(x for x, _ in ratios), max(x for x, _ in ratios)
        if (hi - lo) / lo > REL_TOL:
            out.append(r.finding(WARN, f"bytes/token implied by val_loss/val_bpb varies across logs ({lo:.4f}-"
                                 f"{hi:.4f}): the byte denominator is not the same for every run", severity=WARN,
                                 found=[round(x, 4) for x, _ in ratios]))
    tok = sorted(str(p) for p in ctx.files if any(str(p).endswith(s) for s in TOKENIZER_FILES))
    if tok:
        out.append(r.finding(WARN, f"ships tokenizer files ({', '.join(tok[:4])}): tokenizer changes must prove "
                             "the byte denominator exact", severity=INFO, found=tok[:4]))
    caseops = "caseops" in ctx.root.name.lower() or "caseops" in ctx.readme.lower()
    if caseops and not any(lg.sidecar for lg in ctx.logs):
        out.append(r.finding(WARN, "CaseOps-style transform but no 'val_bpb:byte_sidecar:enabled' line in any log",
                             severity=INFO))
    if not out:
        if not ratios and src is None:
            return [r.finding(SKIP, "no script and no scored logs")]
        bpt = f" ({ratios[0][0]:.4f} bytes/token)" if ratios else ""
        return [r.finding(PASS, f"no hard-coded constant; byte denominator consistent across logs{bpt}")]
    return out


RULES = [
    Rule("TOK.BPB", "bytes in the BPB denominator are the exact original UTF-8 bytes (static checks)",
         "README Submission Process criterion 2; Scylla PR #1184 removal (#1806)", ERROR, check_bpb),
]
