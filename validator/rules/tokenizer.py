"""TOK.BPB static checks: no hard-coded bytes/token constants, a consistent byte denominator, sidecar evidence."""

from __future__ import annotations

import math
import re

from validator.rules.base import ERROR, FAIL, INFO, PASS, SKIP, WARN, Finding, FolderContext, Rule
from validator.rules.code import code_units
from validator.rules.data import VOCAB_VAL, vocab_of

# UTF-8 bytes of the canonical validation split (the first 50k documents), as implied by every merged record's
# scoring line: val_tokens x val_loss / (val_bpb x ln 2) = 151,02x,xxx-151,08x,xxx for sp1024/4096/8192, CaseOps
# (byte sidecar) and byte-level tokenizers alike (RECORDS_AUDIT.md). A denominator above it is inflated.
CANONICAL_VAL_BYTES = 151_080_361
EARLIER_EXPORT_TOKENS = {63_779_840: 155_769_744}  # NaiveBaseline's earlier sp1024 val export (2026-03-17)
INFLATION_TOL = 5e-4  # 0.05 %: rounding of 4-decimal loss/bpb lines is < 0.015 %
DEFLATION_TOL = 2e-3
SUBSET_TOL = 0.01  # a record whose denominator is 1 % short of the validation text's bytes scored a subset
CONST_BPT = re.compile(r"(?:math\.)?log\(2(?:\.0)?\)\s*\*\s*\d+\.\d+|/\s*\d+\.\d+\s*/\s*(?:math\.)?log\(2")
TOKENIZER_FILES = (".model", ".vocab", ".meta.npz")
REL_TOL = 2e-3


def bytes_per_token(val_loss: float, val_bpb: float) -> float:
    """Bytes per token implied by a (loss in nats/token, bpb) pair."""
    return val_loss / (val_bpb * math.log(2))


def reference_bytes(model_path) -> list[int]:
    """UTF-8 bytes of each piece of a SentencePiece model by the baseline's rule (build_sentencepiece_luts):
    control/unknown/unused 0, byte-fallback pieces 1, a leading '▁' not counted (it is the space the *next*
    position's has_leading_space adds)."""
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(model_path))
    out = []
    for i in range(sp.vocab_size()):
        if sp.is_control(i) or sp.is_unknown(i) or sp.is_unused(i):
            out.append(0)
        elif sp.is_byte(i):
            out.append(1)
        else:
            out.append(len(sp.id_to_piece(i).removeprefix("\u2581").encode("utf-8")))
    return out


def shipped_table_findings(ctx: FolderContext, r: Rule) -> list[Finding]:
    """A byte table shipped with the folder (an .npz with `base_bytes`) against the shipped tokenizer's pieces:
    any token counted with more bytes than its piece has inflates the BPB denominator (Scylla, PR #1184)."""
    npzs = [ctx.root / p for p in ctx.files if str(p).endswith(".npz") and (ctx.root / p).stat().st_size < 64 << 20]
    models = [ctx.root / p for p in ctx.files if str(p).endswith(".model")]
    if not npzs or not models:
        return []
    import numpy as np

    out: list[Finding] = []
    for npz in npzs:
        try:
            with np.load(npz, allow_pickle=False) as z:
                table = z["base_bytes"].astype(np.int64) if "base_bytes" in z.files else None
        except Exception as exc:  # noqa: BLE001 - untrusted bytes: any failure (BadZipFile, EOFError…) is a finding
            out.append(r.finding(FAIL, f"{ctx.rel(npz)}: not a readable NumPy archive ({type(exc).__name__}: "
                                 f"{str(exc)[:80]}): a byte table no one can check", file=ctx.rel(npz)))
            continue
        if table is None:
            continue
        for model in models:
            try:
                ref = reference_bytes(model)
            except Exception:  # noqa: BLE001 - not a SentencePiece model
                continue
            n = min(len(ref), table.size)
            over = [i for i in range(n) if table[i] > ref[i]]
            if over:
                i = over[0]
                out.append(r.finding(FAIL, f"{ctx.rel(npz)} counts {len(over)} token(s) with more bytes than their "
                                     f"piece in {ctx.rel(model)} has (first: id {i}, {int(table[i])} bytes vs "
                                     f"{ref[i]}): the BPB denominator is inflated", file=ctx.rel(npz),
                                     expected=ref[i], found=int(table[i])))
            else:
                out.append(r.finding(PASS, f"{ctx.rel(npz)} byte table <= the pieces of {ctx.rel(model)}",
                                     file=ctx.rel(npz)))
            break
    return [f for f in out if f.status == FAIL]


def check_bpb(ctx: FolderContext) -> list[Finding]:
    r = RULES[0]
    out: list[Finding] = []
    for unit in code_units(ctx):
        for no, line in enumerate(unit.lines, start=1):
            if CONST_BPT.search(line) and not line.lstrip().startswith("#"):
                out.append(r.finding(FAIL, "hard-coded bytes-per-token constant in the bpb formula",
                                     file=unit.name, line=no, found=line.strip()[:100]))
    canonical = VOCAB_VAL.get(vocab_of(ctx), ())
    for lg in ctx.scoring:
        fin = lg.final(ctx.method)
        counts = [lg.val_tokens] if lg.val_tokens is not None else list(canonical)  # unlogged: the vocab's split
        if fin is None or not counts or fin.val_bpb <= 0 or fin.val_loss <= 0:
            continue
        # the count that inflates least (a vocabulary with two canonical splits: either may be the one scored)
        n = min(counts, key=lambda c: (c - 1) * bytes_per_token(fin.val_loss, fin.val_bpb) /
                EARLIER_EXPORT_TOKENS.get(c, CANONICAL_VAL_BYTES))
        implied = (n - 1) * bytes_per_token(fin.val_loss, fin.val_bpb)
        ref = EARLIER_EXPORT_TOKENS.get(n, CANONICAL_VAL_BYTES)
        rel = implied / ref - 1.0
        where = dict(file=ctx.rel(lg.path), line=fin.line)
        assumed = "" if lg.val_tokens is not None else ", the canonical count of its vocabulary: the log shows none"
        firm = lg.val_tokens is not None or ctx.track == "record"  # an assumed count decides a record only
        if rel > INFLATION_TOL:
            out.append(r.finding(FAIL if firm else WARN, f"the scoring line implies {implied:,.0f} bytes in the BPB "
                                 f"denominator (val_tokens {n:,}{assumed} x val_loss/(val_bpb ln 2)); the validation "
                                 f"text has {ref:,} UTF-8 bytes: the denominator is inflated by {rel:+.2%} (byte "
                                 "table / sidecar overcounts, e.g. byte-fallback pieces counted as 3 bytes, PR #1184)",
                                 severity=ERROR if firm else INFO, expected=f"<= {ref * (1 + INFLATION_TOL):,.0f}",
                                 found=round(implied), **where))
        elif rel < -DEFLATION_TOL and lg.val_tokens is not None:  # the text's bytes hold for every tokenizer
            subset = rel < -SUBSET_TOL and ctx.track == "record"
            out.append(r.finding(FAIL if subset else WARN, f"the scoring line implies {implied:,.0f} bytes, {rel:+.2%} "
                                 f"against the {ref:,} UTF-8 bytes of the validation text (a subset, another split, "
                                 "or a different byte count: prove the denominator)", severity=ERROR if subset else
                                 WARN, found=round(implied), **where))
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
    out += shipped_table_findings(ctx, r)
    tok = sorted(str(p) for p in ctx.files if any(str(p).endswith(s) for s in TOKENIZER_FILES))
    if tok:
        out.append(r.finding(WARN, f"ships tokenizer files ({', '.join(tok[:4])}): tokenizer changes must prove "
                             "the byte denominator exact", severity=INFO, found=tok[:4]))
    caseops = "caseops" in ctx.root.name.lower() or "caseops" in ctx.readme.lower()
    if caseops and not any(lg.sidecar for lg in ctx.logs):
        out.append(r.finding(WARN, "CaseOps-style transform but no 'val_bpb:byte_sidecar:enabled' line in any log",
                             severity=INFO))
    if not out:
        if not ratios and ctx.script_source is None:
            return [r.finding(SKIP, "no script and no scored logs")]
        bpt = f" ({ratios[0][0]:.4f} bytes/token)" if ratios else ""
        return [r.finding(PASS, f"no hard-coded constant; byte denominator consistent across logs{bpt}")]
    return out


RULES = [
    Rule("TOK.BPB", "bytes in the BPB denominator are the exact original UTF-8 bytes (static checks)",
         "README Submission Process criterion 2; Scylla PR #1184 removal (#1806)", ERROR, check_bpb,
         lower="a denominator below the canonical byte count, bytes/token varying across logs: WARN; tokenizer "
               "files shipped, CaseOps without a sidecar line: INFO"),
]
