"""Static pattern scans of the evaluation code: EVAL.TTT, EVAL.PREQUANT_TTT, EVAL.SLOT, EVAL.NGRAM, EVAL.NO_SELECTION.

Each scan reads the decoded train_gpt.py and every local Python file it reaches (`validator.rules.code`: AST +
lines) for the shapes the rulebook names (§4: a training loop over validation tokens whose backward() precedes the
scoring accumulation, val-token warm-ups with optimizer steps, optimizers over logit/hidden offsets, n-gram/PPM
experts, min() over NLLs). A static scan cannot prove a violation: hits are WARN with the line for review, and
`pgolf validate --run --evaluator FILE.py:NAME` (validator/harness.py) is the test that decides.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator

from validator.rules.base import ERROR, FAIL, INFO, PASS, SKIP, UNREAD, WARN, Finding, FolderContext, Rule
from validator.rules.code import CodeUnit, code_units

VAL = re.compile(r"val_tokens|val_data|val_ids|val_stream|val_seq|fineweb_val")
ACCUM = re.compile(r"loss_sum|nll_sum|sum_nll|total_nll|total_loss|byte_sum|bytes_sum|token_count|tok_count|"
                   r"bits_sum|scored")
WARM = re.compile(r"warm(?:ing)?[ _-]?up[^\n]*compil|compil[^\n]*warm", re.I)  # a compile warm-up, not LR warm-up
SERIALIZE = re.compile(r"^(save|serialize\w*|quantize\w*|gptq\w*|compress\w*|export\w*)$", re.I)
OFFSET = re.compile(r"slot|logit_bias|bias_vec|delta|hidden_offset", re.I)
NGRAM = re.compile(r"n_?gram|\bppm|PPM|backoff", re.I)
TARGET_KEY = re.compile(r"(hash|key)\w*\s*=.*\b(target|targets|tgt|y_batch|next_tok|tokens\[\s*(?:p|pos|i)\s*\])")
TEMP_FIT = re.compile(r"optimal_T\S*|final_temped\S*|temp_scaling\S*")
MANUAL = "static scan; `pgolf validate --run` decides dynamically"


def _units(ctx: FolderContext, rule: Rule) -> tuple[list[CodeUnit], list[Finding]]:
    """The code units that parse (train_gpt.py and the helpers it reaches), and a SKIP finding per unit that does
    not (or why nothing is scanned)."""
    if ctx.is_run_dir:
        return [], [rule.finding(SKIP, "pgolf run directory: evaluators are checked by the dynamic harness (--run)",
                                 severity=INFO)]
    units = code_units(ctx)
    if not units:
        return [], [rule.finding(SKIP, "no train_gpt.py")]
    skips = [rule.finding(SKIP, f"{u.name} does not parse here, so it is {UNREAD} (see FILES.RUNS_IN_FOLDER)",
                          file=u.name)
             for u in units if not isinstance(u.tree, ast.Module)]
    return [u for u in units if isinstance(u.tree, ast.Module)], skips


def _report(out: list[Finding], units: list[CodeUnit], skips: list[Finding], passed: Finding) -> list[Finding]:
    """The findings (at most five), else the pass where some unit was scanned; the units that could not be scanned
    are reported either way."""
    return out[:5] + skips if out else ([passed] if units else []) + skips


def _names(node: ast.AST) -> Iterator[str]:
    for n in ast.walk(node):
        if isinstance(n, ast.Name):
            yield n.id
        elif isinstance(n, ast.Attribute):
            yield n.attr
        elif isinstance(n, ast.arg):
            yield n.arg


def _mentions(node: ast.AST, rx: re.Pattern[str]) -> bool:
    return any(rx.search(n) for n in _names(node))


def _call_lines(node: ast.AST, attr: str) -> list[int]:
    return sorted(n.lineno for n in ast.walk(node) if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)
                  and n.func.attr == attr)


def _accum_lines(node: ast.AST) -> list[int]:
    """Lines that add to a score accumulator (`loss_sum += …`, `sink.record(…)`)."""
    out = []
    for n in ast.walk(node):
        if isinstance(n, ast.AugAssign) and _mentions(n.target, ACCUM):
            out.append(n.lineno)
        elif isinstance(n, ast.Assign) and any(_mentions(t, ACCUM) for t in n.targets) and isinstance(n.value,
                                                                                                      ast.BinOp):
            out.append(n.lineno)
        elif isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute) and (
                n.func.attr == "record" or (n.func.attr in ("add_", "index_add_", "scatter_add_")
                                            and _mentions(n.func.value, ACCUM))):
            out.append(n.lineno)
    return sorted(out)


def _called_before_serialization(tree: ast.Module, name: str) -> int | None:
    """Line of a call of `name` that precedes, in the same function, a save/serialize/quantize call."""
    for fn in _functions(tree):
        calls = [n.lineno for n in ast.walk(fn) if isinstance(n, ast.Call) and (
            (isinstance(n.func, ast.Name) and n.func.id == name)
            or (isinstance(n.func, ast.Attribute) and n.func.attr == name))]
        if not calls:
            continue
        ser = [n.lineno for n in ast.walk(fn) if isinstance(n, ast.Call) and SERIALIZE.match(
            n.func.id if isinstance(n.func, ast.Name) else n.func.attr if isinstance(n.func, ast.Attribute) else "")]
        early = [c for c in calls if any(s > c for s in ser)]
        if early:
            return early[0]
    return None


def _serialized_after(fn: ast.AST, loop: ast.For | ast.While) -> int | None:
    """Line of a save/serialize/quantize call in `fn` after `loop` (the loop's training then reaches the artifact)."""
    end = loop.end_lineno or loop.lineno
    return next((n.lineno for n in ast.walk(fn) if isinstance(n, ast.Call) and n.lineno > end and SERIALIZE.match(
        n.func.id if isinstance(n.func, ast.Name) else n.func.attr if isinstance(n.func, ast.Attribute) else "")),
        None)


def _functions(tree: ast.Module) -> list[ast.FunctionDef | ast.AsyncFunctionDef]:
    return [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]


def _training_loops(fn: ast.AST) -> list[ast.For | ast.While]:
    """Outermost loops of `fn` that call backward() and step()."""
    loops: list[ast.For | ast.While] = []

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.For, ast.While)) and _call_lines(child, "backward") and _call_lines(child,
                                                                                                          "step"):
                loops.append(child)
            elif not isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                visit(child)

    visit(fn)
    return loops


def _slices_val(node: ast.AST) -> bool:
    """The node indexes validation tokens itself (`val_tokens[a:b]`), not merely passes them to an evaluation."""
    return any(isinstance(n, ast.Subscript) and _mentions(n.value, VAL) for n in ast.walk(node))


def _innermost_loop(loop: ast.For | ast.While, line: int) -> ast.For | ast.While:
    """The innermost loop inside `loop` (or `loop` itself) whose body holds `line`."""
    best = loop
    for n in ast.walk(loop):
        if isinstance(n, (ast.For, ast.While)) and n.lineno <= line <= (n.end_lineno or n.lineno):
            if n.lineno >= best.lineno and (n.end_lineno or 0) <= (best.end_lineno or 0):
                best = n
    return best


def _scored_first_outside(loop: ast.For | ast.While, bw: int) -> bool:
    """Some loop around the backward() accumulates a score before it (score chunk, then train on it)."""
    around = [n for n in ast.walk(loop) if isinstance(n, (ast.For, ast.While))
              and n.lineno <= bw <= (n.end_lineno or n.lineno)]
    for n in sorted(around, key=lambda n: n.lineno, reverse=True):  # innermost first
        acc = _accum_lines(n)
        if acc:
            return acc[0] < bw
    return False


def _val_training(ctx: FolderContext, unit: CodeUnit) -> list[tuple[ast.AST, ast.For | ast.While]]:
    """(function, loop) pairs: a backward()+step() loop that slices validation tokens (cached per unit)."""
    cache = ctx.__dict__.setdefault("_val_training", {})
    if unit.name not in cache:
        cache[unit.name] = [(fn, loop) for fn in _functions(unit.tree) if _mentions(fn, VAL)
                            for loop in _training_loops(fn) if _slices_val(loop)]
    return cache[unit.name]


def check_ttt(ctx: FolderContext) -> list[Finding]:
    r = RULES[0]
    units, skips = _units(ctx, r)
    out: list[Finding] = []
    legal = unresolved = 0
    for unit in units:
        for fn, loop in _val_training(ctx, unit):
            verdict = _ttt_verdict(r, unit, fn, loop)
            if verdict is None:
                legal += 1
            elif verdict == "unresolved":
                unresolved += 1
            else:
                out.append(verdict)
    if legal or unresolved:
        passed = r.finding(PASS, f"{legal + unresolved} TTT loop(s): {legal} accumulate the score before backward() "
                           f"(score-first shape), {unresolved} score and train in separate steps the static scan "
                           "cannot order (run the harness to decide)")
    else:
        passed = r.finding(PASS, "no optimizer loop over validation tokens (no test-time training found; static)")
    return _report(out, units, skips, passed)


def _ttt_verdict(r: Rule, unit: CodeUnit, fn: ast.AST, loop: ast.For | ast.While) -> Finding | str | None:
    """A FAIL for a TTT loop that trains before it scores; None for the score-first shape; "unresolved" else."""
    name, lines = getattr(fn, "name", "?"), unit.lines
    text = "\n".join(lines[max(0, loop.lineno - 20) : loop.end_lineno])
    bw = _call_lines(loop, "backward")[0]
    acc = _accum_lines(_innermost_loop(loop, bw))
    if WARM.search(text) and not _accum_lines(loop):
        return r.finding(FAIL, f"{name}(): a warm-up loop runs backward()/step() on validation tokens before they are "
                         f"scored — warm-ups must use synthetic or training tokens (PR #1530 pattern; {MANUAL})",
                         file=unit.name, line=loop.lineno)
    if acc and acc[0] > bw:
        return r.finding(FAIL, f"{name}(): in the TTT loop backward() (line {bw}) comes before the score is "
                         f"accumulated (line {acc[0]}): adapt-then-score ({MANUAL})", file=unit.name, line=bw)
    if not acc and _accum_lines(fn) and _accum_lines(fn)[0] > loop.end_lineno:
        return r.finding(FAIL, f"{name}(): trains on validation tokens in a loop (lines {loop.lineno}-"
                         f"{loop.end_lineno}) and accumulates scores only after it: pre-eval / multi-epoch TTT "
                         f"({MANUAL})", file=unit.name, line=loop.lineno)
    return None if acc or _scored_first_outside(loop, bw) else "unresolved"


def check_prequant_ttt(ctx: FolderContext) -> list[Finding]:
    r = RULES[1]
    logged = [(lg, n) for lg in ctx.logs for n in lg.prequant_lines[:1]]
    if logged:
        return [r.finding(FAIL, "the log shows a pre-quantization TTT pass (fine-tuning on validation tokens before "
                          "the model is quantized/serialized; PR #1376 family)", file=ctx.rel(lg.path), line=n)
                for lg, n in logged[:5]]
    units, skips = _units(ctx, r)
    out = []
    for unit in units:
        for fn, loop in _val_training(ctx, unit):
            name = getattr(fn, "name", "?")
            at = None if _accum_lines(fn) else next(  # the caller may be another unit (a helper's function)
                (x for u in units if (x := _called_before_serialization(u.tree, name)) is not None), None)
            if at is None and not _accum_lines(loop) and (later := _serialized_after(fn, loop)) is not None:
                out.append(r.finding(FAIL, f"{name}(): an optimizer loop over validation tokens (lines {loop.lineno}-"
                                     f"{loop.end_lineno}) that scores nothing, then the model is saved/quantized (line "
                                     f"{later}) — fine-tuning on val before serialization is forbidden (PR #1376 "
                                     f"family; {MANUAL})", file=unit.name, line=loop.lineno))
                continue
            if at is not None:
                out.append(r.finding(FAIL, f"{name}(): an optimizer loop over validation tokens that scores nothing, "
                                     f"called (line {at}) before the model is saved/quantized — fine-tuning on val "
                                     f"before serialization is forbidden (PR #1376 family; {MANUAL})",
                                     file=unit.name, line=loop.lineno))
    return _report(out, units, skips,
                   r.finding(PASS, "no optimizer loop over validation tokens outside a scoring loop (static)"))


def check_slot(ctx: FolderContext) -> list[Finding]:
    r = RULES[2]
    units, skips = _units(ctx, r)
    out = []
    for unit in units:
        for n in ast.walk(unit.tree):
            if (isinstance(n, ast.Call) and n.args and (
                    (isinstance(n.func, ast.Attribute) and isinstance(n.func.value, ast.Attribute)
                     and n.func.value.attr == "optim") or (isinstance(n.func, ast.Name) and n.func.id in {"LBFGS"}))):
                arg = ast.unparse(n.args[0])
                if OFFSET.search(arg):
                    out.append(r.finding(WARN, f"an optimizer over {arg[:60]!r}: eval-time optimization of a "
                                         "logit/hidden offset (SLOT) is legal only on already-scored context, never "
                                         f"on the scored slice (Issue #1336 unruled for context-only; {MANUAL})",
                                         severity=WARN, file=unit.name, line=n.lineno))
    return _report(out, units, skips, r.finding(PASS, "no optimizer over logit/hidden offsets (no SLOT found; static)"))


def check_ngram(ctx: FolderContext) -> list[Finding]:
    r = RULES[3]
    units, skips = _units(ctx, r)
    out = []
    for unit in units:
        lines = unit.lines
        for no, line in enumerate(lines, start=1):
            if TARGET_KEY.search(line) and NGRAM.search("\n".join(lines[max(0, no - 30) : no + 5])):
                out.append(r.finding(FAIL, "a hash/key computed from the target token near n-gram code: "
                                     f"`{line.strip()[:80]}` — keys and gates must use context only "
                                     f"(PR #779 family; {MANUAL})", file=unit.name, line=no))
        experts = [f for f in _functions(unit.tree)
                   if NGRAM.search(f.name) and _mentions(f, re.compile(r"eval|val_|score"))]
        for f in experts[:3]:
            out.append(r.finding(WARN, f"{f.name}(): an eval-time n-gram/PPM expert — it must be built from scored "
                                 "tokens only and mix to a normalized distribution over the vocabulary (C1/C2; "
                                 f"{MANUAL})", severity=WARN, file=unit.name, line=f.lineno))
    return _report(out, units, skips, r.finding(PASS, "no eval-time n-gram/PPM expert found (static)"))


def check_no_selection(ctx: FolderContext) -> list[Finding]:
    r = RULES[4]
    units, skips = _units(ctx, r)
    out = []
    nll = re.compile(r"nll|loss", re.I)
    for unit in units:
        for n in ast.walk(unit.tree):
            if isinstance(n, ast.Call) and len(n.args) >= 2 and (
                    (isinstance(n.func, ast.Attribute) and n.func.attr == "minimum")
                    or (isinstance(n.func, ast.Name) and n.func.id == "min")):
                if all(_mentions(a, nll) for a in n.args[:2]):
                    out.append(r.finding(WARN, f"min over two NLL/loss values `{ast.unparse(n)[:80]}`: the score "
                                         f"must be one pass, not the better of alternatives (#573, #659; {MANUAL})",
                                         severity=WARN, file=unit.name, line=n.lineno))
    for lg in ctx.logs:
        try:
            m = TEMP_FIT.search(lg.path.read_text(encoding="utf-8", errors="replace"))
        except OSError:
            continue
        if m:
            out.append(r.finding(WARN, f"log shows a temperature search at evaluation ({m.group(0)!r}): it must not be "
                                 "fitted on scored tokens (PR #991; manual review)", severity=INFO,
                                 file=ctx.rel(lg.path)))
            break
    return _report(out, units, skips, r.finding(PASS, "no min() over NLLs found (static)"))


RULES = [
    Rule("EVAL.TTT", "TTT only on already-scored tokens; no pre-eval/multi-pass TTT; warm-ups on synthetic tokens",
         "README FAQ TTT; Issues #402, #677, #1017 C3", ERROR, check_ttt,
         lower="TTT loops the scan cannot order: PASS with a note (the dynamic harness decides)"),
    Rule("EVAL.PREQUANT_TTT", "no fine-tuning on validation tokens before quantization/serialization",
         "valerio-oai closing PR #1376; Issue #677", ERROR, check_prequant_ttt),
    Rule("EVAL.SLOT", "no optimization of logit/hidden offsets against the tokens being scored",
         "Issue #1336; PR #1240", ERROR, check_slot,
         lower="an optimizer over offsets is WARN statically (context-only SLOT is unruled); the flip test decides"),
    Rule("EVAL.NGRAM", "eval-time n-gram/PPM experts: context-only keys, scored-token state, normalized mixture",
         "PR #886, #982 (valerio-oai), Issue #1872", ERROR, check_ngram,
         lower="an eval-time n-gram expert without a target key: WARN (legal when normalized; the harness decides)"),
    Rule("EVAL.NO_SELECTION", "one pass; no min()/oracle/temperature fitted on scored outcomes",
         "Issue #1017 C4; Issue #677 (#573, #659)", ERROR, check_no_selection,
         lower="min() over two losses is WARN statically (also used for best-val tracking); C4 in the harness decides"),
]
