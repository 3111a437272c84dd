"""The script's own clock arithmetic (part of TIME.TRAIN): an elapsed time is a clock reading minus a clock reading,
converted between units, summed and compared. A factor that is no unit conversion (`800.0 * (perf_counter() - t0)`
where the record had `1000.0 *`), or a constant added to or taken from a clock reading or an elapsed time
(`perf_counter() - t0 - 30`, `t0 += 60`), makes every logged training time and the script's own cap check
under-report, and no log can show it: the figures agree with one another.

The scan follows, over each code unit's syntax tree (`validator.rules.code.code_units`: the decoded train_gpt.py
and every local file it reaches):
  * clock readings: `time.perf_counter/time/monotonic/process_time/thread_time` (and their `_ns` forms),
    `timeit.default_timer`, `datetime.now/utcnow` (READING), and `<event>.elapsed_time(<event>)` (CUDA events,
    a DURATION), under any import alias (`from time import perf_counter as pc`, `import time as _t`);
  * what carries them: a difference of readings is a DURATION (`elapsed = now - t0`), as is a sum of durations
    (`training_time_ms += 1000.0 * (...)`); names take the kind of their bindings, to a fixed point (judged per
    file, whatever the scope). A product or quotient with a run-time value (a step count, a budget, a token
    count) is no clock time: a rate, a fraction, a per-step time times a count;
and fails:
  * a product or quotient of a clock-carrying value and a constant (a literal, a name bound only to literals, or
    arithmetic of those) that is no unit conversion: powers of ten from 1e-9 to 1e9, 60 and 3600 (and 60,000 and
    3,600,000 for ms) and their inverses;
  * a constant larger than `EPSILON` (a guard against division by zero) added to a duration or taken from it
    (`perf_counter() - t0 - 30`, `training_time_ms -= 5000`);
  * a start shifted: a name measured from (`now - t0`) bound to a reading plus a constant
    (`t0 = perf_counter() + 30`, `t0 += 60`), or such a sum subtracted inline. A deadline (`time.monotonic() +
    120`, compared with later readings) is no start and passes;
  * a clock function rebound (`time.perf_counter = ...`).
Out of reach: a factor computed at run time (`elapsed * float(os.environ["S"])` reads like a per-step time times a
count), a clock paused around training steps (the periodic-validation pause is legitimate and has the same shape),
a clock patched through `setattr` or a C extension. None of the 60 merged records' code has a finding.
"""

from __future__ import annotations

import ast
import math
from collections.abc import Iterator

from validator.rules.code import CodeUnit

CLOCK_FUNCS = {"perf_counter", "perf_counter_ns", "time", "time_ns", "monotonic", "monotonic_ns", "process_time",
               "process_time_ns", "thread_time", "thread_time_ns", "default_timer"}
CLOCK_MODULES = {"time", "timeit"}
DATETIME_FUNCS = {"now", "utcnow"}
UNITS = [10.0 ** k for k in range(-9, 10)] + [60.0, 3600.0, 1 / 60.0, 1 / 3600.0, 60_000.0, 1 / 60_000.0,
                                               3_600_000.0, 1 / 3_600_000.0]
READING, DURATION = "reading", "duration"
EPSILON = 1e-3  # an additive constant at most this large (in the clock's own unit) is a division guard, not a shift


def is_unit(value: float) -> bool:
    """Whether a factor is a unit conversion (ns/us/ms/s/min/h in either direction), or 1."""
    return value > 0 and any(math.isclose(value, u, rel_tol=1e-9) for u in UNITS)


class _Scan:
    def __init__(self, tree: ast.Module) -> None:
        self.tree = tree
        self.modules: set[str] = set()  # names bound to the time/timeit modules
        self.funcs: set[str] = set()  # names bound to a clock function
        self.datetime: set[str] = set()  # names bound to datetime.datetime
        self.constants: dict[str, float] = {}
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for a in node.names:
                    if a.name in CLOCK_MODULES:
                        self.modules.add(a.asname or a.name)
            elif isinstance(node, ast.ImportFrom) and node.module in CLOCK_MODULES:
                self.funcs |= {a.asname or a.name for a in node.names if a.name in CLOCK_FUNCS}
            elif isinstance(node, ast.ImportFrom) and node.module == "datetime":
                self.datetime |= {a.asname or a.name for a in node.names if a.name == "datetime"}
        self.modules.add("time")  # `time` unbound in the file is still the module when reached through a helper
        self._constants()
        self.scope: dict[int, ast.AST] = {}  # id(node) -> its function (or the module)
        self.bound: dict[int, set[str]] = {}  # id(function) -> the names it binds (its locals)
        self._scopes(tree, tree)
        self.kinds: dict[tuple[int, str], str] = {}
        self._clocked_names()

    def _scopes(self, node: ast.AST, scope: ast.AST) -> None:
        """Each node's function; each function's locals (what it assigns, its parameters), the module's too:
        minified code reuses one-letter names in every function."""
        self.scope[id(node)] = scope
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)) and node is not scope:
            self.bound[id(node)] = {a.arg for a in ast.walk(node.args) if isinstance(a, ast.arg)}
            for child in ast.iter_child_nodes(node):
                self._scopes(child, node)
            return
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            self.bound.setdefault(id(scope), set()).add(node.id)
        for child in ast.iter_child_nodes(node):
            self._scopes(child, scope)

    def key(self, node: ast.AST) -> tuple[int, str] | None:
        """The variable a Name or Attribute is: (its function, name) for a local, (module, name) for a global,
        (0, attr) for an attribute (`self.t0`: any object's)."""
        if isinstance(node, ast.Attribute):
            return 0, node.attr
        if not isinstance(node, ast.Name):
            return None
        scope = self.scope.get(id(node), self.tree)
        return (id(scope), node.id) if node.id in self.bound.get(id(scope), set()) else (id(self.tree), node.id)

    def _constants(self) -> None:
        """Names every binding of which is a numeric constant expression (all bindings the same value)."""
        values: dict[str, list[float | None]] = {}
        for node in ast.walk(self.tree):
            targets: list[ast.expr] = []
            value: ast.expr | None = None
            if isinstance(node, ast.Assign):
                targets, value = node.targets, node.value
            elif isinstance(node, ast.AnnAssign) and node.value is not None:
                targets, value = [node.target], node.value
            elif isinstance(node, ast.AugAssign):
                targets, value = [node.target], None
            elif isinstance(node, (ast.For, ast.comprehension)):
                targets = [node.target]
            for t in targets:
                for n in ast.walk(t):
                    if isinstance(n, ast.Name):
                        values.setdefault(n.id, []).append(self.constant(value) if isinstance(t, ast.Name) else None)
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                for a in ast.walk(node.args):
                    if isinstance(a, ast.arg):
                        values.setdefault(a.arg, []).append(None)
        self.constants = {k: v[0] for k, v in values.items()
                          if v and v[0] is not None and all(x == v[0] for x in v)}  # type: ignore[misc]

    def constant(self, node: ast.expr | None) -> float | None:
        """The value of a numeric constant expression (literals, constant names, + - * / ** and unary minus)."""
        if node is None:
            return None
        if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)) and not isinstance(node.value,
                                                                                                      bool):
            return float(node.value)
        if isinstance(node, ast.Name):
            return self.constants.get(node.id)
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
            v = self.constant(node.operand)
            return None if v is None else (-v if isinstance(node.op, ast.USub) else v)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("float", "int") \
                and len(node.args) == 1:
            return self.constant(node.args[0])
        if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Sub, ast.Mult, ast.Div, ast.Pow)):
            a, b = self.constant(node.left), self.constant(node.right)
            if a is None or b is None:
                return None
            try:
                if isinstance(node.op, ast.Pow):
                    return float(a ** b) if abs(b) < 64 else None
                return {ast.Add: lambda: a + b, ast.Sub: lambda: a - b, ast.Mult: lambda: a * b,
                        ast.Div: lambda: a / b}[type(node.op)]()
            except (ZeroDivisionError, OverflowError):
                return None
        return None

    def is_clock_read(self, node: ast.AST) -> bool:
        """A call that reads a clock."""
        if not isinstance(node, ast.Call):
            return False
        f = node.func
        if isinstance(f, ast.Name):
            return f.id in self.funcs
        if isinstance(f, ast.Attribute):
            if f.attr == "elapsed_time" and node.args:  # torch.cuda.Event.elapsed_time(end)
                return True
            base = f.value
            if f.attr in CLOCK_FUNCS and isinstance(base, ast.Name) and base.id in self.modules:
                return True
            if f.attr in DATETIME_FUNCS and (isinstance(base, ast.Name) and base.id in self.datetime or
                                             isinstance(base, ast.Attribute) and base.attr == "datetime"):
                return True
        return False

    def kind(self, node: ast.AST) -> str | None:
        """What an expression holds: READING (a clock's value: a start, a deadline), DURATION (a difference of
        readings, a sum of such, an elapsed_time), or None. A product or quotient with a run-time value ends it (a
        rate, a fraction of a budget, a per-step time times a step count: no clock time)."""
        if self.is_clock_read(node):
            f = node.func  # type: ignore[attr-defined]
            return DURATION if isinstance(f, ast.Attribute) and f.attr == "elapsed_time" else READING
        if isinstance(node, (ast.Name, ast.Attribute)):  # t0, self.t0, timer.elapsed
            return self.kinds.get(self.key(node))  # type: ignore[arg-type]
        if isinstance(node, ast.BinOp):
            a, b = self.kind(node.left), self.kind(node.right)
            if isinstance(node.op, (ast.Mult, ast.Div, ast.FloorDiv)):
                other = node.right if a else node.left
                if (a and b) or self.constant(other) is None or (b and not isinstance(node.op, ast.Mult)):
                    return None  # time × time, time × run-time value, constant / time
                return a or b
            if isinstance(node.op, ast.Sub):
                return DURATION if a == READING and b == READING else a or (DURATION if b == DURATION else None)
            if isinstance(node.op, ast.Add):
                return READING if READING in (a, b) else a or b
            return None
        if isinstance(node, ast.UnaryOp):
            return self.kind(node.operand)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in (
                "float", "int", "round", "abs", "max", "min"):
            return next((k for k in map(self.kind, node.args) if k), None)
        if isinstance(node, ast.IfExp):
            return self.kind(node.body) or self.kind(node.orelse)
        return None

    def _clocked_names(self) -> None:
        """Each name's kind, to a fixed point: DURATION when every clock-carrying binding is one, else READING."""
        while True:
            found: dict[tuple[int, str], set[str]] = {}
            for node in ast.walk(self.tree):
                if isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)) and node.value is not None:
                    k = self.kind(node.value)
                    if isinstance(node, ast.AugAssign) and isinstance(node.op, (ast.Mult, ast.Div)):
                        k = None
                    if not k:
                        continue
                    for t in node.targets if isinstance(node, ast.Assign) else [node.target]:
                        if (name := self.key(t)) is not None:
                            found.setdefault(name, set()).add(k)
            kinds = {n: DURATION if ks == {DURATION} else READING for n, ks in found.items()}
            if kinds == self.kinds:
                return
            self.kinds = kinds

    def _starts(self) -> set[tuple[int, str]]:
        """Variables taken from a clock reading to measure from (`now - t0`): a start."""
        return {self.key(n.right) for n in ast.walk(self.tree)  # type: ignore[misc]
                if isinstance(n, ast.BinOp) and isinstance(n.op, ast.Sub) and isinstance(n.right, (ast.Name,
                                                                                                 ast.Attribute))
                and self.kind(n.left) == READING and self.kind(n.right) == READING}

    def _shifted(self, node: ast.AST) -> float | None:
        """The constant a reading is shifted by (`time.perf_counter() + 30`), or None."""
        if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Sub)):
            for r, c in ((node.left, node.right), (node.right, node.left)):
                value = self.constant(c)  # type: ignore[arg-type]
                if self.kind(r) == READING and value is not None and abs(value) > EPSILON:
                    return value
        return None

    def problems(self) -> Iterator[tuple[int, str]]:
        starts = self._starts()
        for node in ast.walk(self.tree):
            if isinstance(node, (ast.Assign, ast.AugAssign, ast.AnnAssign)):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                for t in targets:
                    if isinstance(t, ast.Attribute) and t.attr in CLOCK_FUNCS and isinstance(t.value, ast.Name) \
                            and t.value.id in self.modules:
                        yield node.lineno, f"the clock {t.value.id}.{t.attr} is rebound"
                    if self.key(t) not in starts or node.value is None:
                        continue
                    what = ast.unparse(t)[:40]
                    if isinstance(node, ast.AugAssign) and isinstance(node.op, (ast.Add, ast.Sub)):
                        value = self.constant(node.value)
                        if value is not None and abs(value) > EPSILON:
                            yield node.lineno, f"the start {what} of a measured time is shifted by {value:g}"
                    elif (value := self._shifted(node.value)) is not None:
                        yield node.lineno, f"the start {what} of a measured time is shifted by {value:g}"
            if isinstance(node, ast.BinOp):
                if isinstance(node.op, ast.Sub) and self.kind(node.left) == READING and \
                        (value := self._shifted(node.right)) is not None:
                    yield node.lineno, f"the start of a measured time is shifted by {value:g}"
                yield from self._binop(node, node.left, node.op, node.right)
            elif isinstance(node, ast.AugAssign) and self.kind(node.target):
                yield from self._binop(node, node.target, node.op, node.value)

    def _binop(self, node: ast.AST, left: ast.AST, op: ast.operator, right: ast.AST) -> Iterator[tuple[int, str]]:
        line = getattr(node, "lineno", 0)
        for clock, other in ((left, right), (right, left)):
            k = self.kind(clock)
            if not k or self.kind(other):
                continue
            value = self.constant(other)  # type: ignore[arg-type]
            if value is None or isinstance(op, ast.Div) and clock is right:
                return  # a run-time factor (a rate, a fraction) or a constant over a time (a rate): no time
            if isinstance(op, (ast.Mult, ast.Div)) and not is_unit(abs(value)):
                yield line, f"a clock reading scaled by {value:g}, which is no unit conversion"
            elif k == DURATION and abs(value) > EPSILON and (isinstance(op, ast.Add) or
                                                              isinstance(op, ast.Sub) and clock is left):
                yield line, f"a measured time offset by {value:g}"
            return


def clock_problems(unit: CodeUnit) -> list[tuple[int, str, str]]:
    """(line, what, source line) of each piece of clock arithmetic in `unit` that is no plain unit conversion."""
    if not isinstance(unit.tree, ast.Module):
        return []
    lines = unit.lines
    seen: set[int] = set()
    out = []
    for no, what in _Scan(unit.tree).problems():
        if no in seen:
            continue
        seen.add(no)
        out.append((no, what, lines[no - 1].strip() if 0 < no <= len(lines) else ""))
    return sorted(out)
