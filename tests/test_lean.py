"""The bundle's LEAN profile (`submissions.lean`, issue #11): asserts and unprotected pure input guards go, and
nothing on the normal path changes."""

from __future__ import annotations

import ast
import textwrap
import types

from submissions.lean import lean_sources, pure


def _lean(code: str, extra: str = "") -> str:
    return lean_sources({"m": textwrap.dedent(code)}, extra=[textwrap.dedent(extra)] if extra else [])["m"]


def _same(a: str, b: str) -> bool:
    return ast.dump(ast.parse(textwrap.dedent(a))) == ast.dump(ast.parse(textwrap.dedent(b)))


def test_asserts_and_pure_guards_go_their_else_body_stays():
    code = """
    def f(x, cfg):
        assert x is not None, 'x'
        if x < 0 or len(cfg.items) != 3:
            raise ValueError(f'bad {x}')
        if not isinstance(x, int):
            raise TypeError('int')
        elif x > 10:
            raise ValueError('big')
        else:
            y = x + 1
        for k in cfg.items:
            if k not in ('a', 'b'):
                raise ValueError(k)
        return y
    """
    lean = _lean(code)
    assert _same(lean, """
    def f(x, cfg):
        y = x + 1
        return y
    """), lean
    # The normal path is the same: valid inputs give the same value.
    cfg = type("C", (), {"items": ("a", "b", "a")})
    for text in (textwrap.dedent(code), lean):
        ns: dict = {}
        exec(text, ns)
        assert ns["f"](4, cfg) == 5


def test_guards_on_tensor_reductions_and_file_queries_go_their_stores_stay():
    """A ScoreSink's consistency checks (`.any()`, `.unique()`, `.min()`/`.max()`, `.sum().item()`) and a codec's
    end check (`d.is_finished()`): pure conditions; the stores and the collective between them stay (a file query,
    `path.stat()`, is not pure: it stays with its guard)."""
    code = """
    def record(self, d, f, n):
        if d.numel() and (int(d.min()) < 1 or int(d.max()) >= n):
            raise ScoringError('range')
        if bool(self.scored[d].any()) or d.unique().numel() != d.numel():
            raise ScoringError('twice')
        self.scored[d] = True
        g = self.scored[1:n].to(torch.uint8)
        dist.all_reduce(g)
        if not bool(g.all()) or int(g.sum().item()) != n:
            raise ScoringError('unscored')
        if not dec.is_finished():
            raise DataError('truncated')
        if path.stat().st_size != 2 * n:
            raise DataError('size')
        return f.reshape(-1)
    """
    assert _same(_lean(code), """
    def record(self, d, f, n):
        self.scored[d] = True
        g = self.scored[1:n].to(torch.uint8)
        dist.all_reduce(g)
        if path.stat().st_size != 2 * n:
            raise DataError('size')
        return f.reshape(-1)
    """)
    assert pure(ast.parse("not GLOB.match(b) or '[' in BRACKETS.sub('', b)", mode="eval").body)  # a pattern's query
    torch = __import__("torch")
    t = torch.tensor([3, 1, 2])  # what the conditions call: no effect but their value
    before = t.clone()
    assert (bool(t.any()), t.unique().numel(), int(t.min()), int(t.max()), int(t.sum().item())) == (True, 3, 1, 3, 6)
    assert torch.equal(t, before)


def test_a_guard_with_a_side_effect_or_a_non_raising_branch_stays():
    code = """
    def f(x, q):
        if q.pop() is None:
            raise ValueError('empty')
        if check(x):
            raise ValueError('bad')
        if x < 0:
            raise ValueError('neg')
        elif x == 0:
            x = 1
        if x > 5:
            raise
        return x
    """
    assert _same(_lean(code), code)
    assert not pure(ast.parse("q.pop()", mode="eval").body) and pure(ast.parse("len(a.b) > c[1]", mode="eval").body)


def test_a_guard_a_recovering_handler_can_see_stays_whatever_it_raises():
    code = """
    class BadShard(ValueError):
        pass

    def parse(s):
        if not s.isdigit():
            raise BadShard(s)
        if len(s) > 9:
            raise OverflowError(s)
        return int(s)

    def load(s):
        try:
            return parse(s)
        except ValueError:
            return 0

    def strict(s):
        try:
            if s == '':
                raise ValueError('empty')
            return s
        except ValueError:
            return None

    def rethrow(s):
        try:
            if s == 'x':
                raise KeyError(s)
            if s == '':
                raise TypeError(s)
        except TypeError as e:
            raise RuntimeError(s) from e

    def width(s):
        if len(s) > 9:
            raise OverflowError(s)
        return len(s)
    """
    lean = _lean(code)
    # parse is in reach of load's handler, which turns an error into the normal value 0: both guards stay (a
    # condition could raise what the handler catches, whatever the guard itself raises).
    assert "raise BadShard(s)" in lean and "raise OverflowError(s)\n    return int(s)" in lean
    assert "raise ValueError('empty')" in lean  # inside the try body of a recovering handler
    assert "raise TypeError(s)" not in lean  # that handler only re-raises: not recovering
    assert "raise KeyError(s)" in lean  # KeyError: caught implicitly by protocols (Mapping.get …)
    assert "raise OverflowError(s)\n    return len(s)" not in lean  # width: no recovering handler reaches it


def test_a_callback_called_under_a_handler_keeps_its_guards():
    code = """
    def backend(name):
        if name == 'fa3':
            raise RuntimeError('fa3 is not importable')
        return 1.0

    def measure(names, time_one):
        out = {}
        for n in names:
            try:
                out[n] = time_one(n)
            except Exception as e:
                out[n] = str(e)
        return out

    def choose(names):
        return measure(names, lambda n: backend(n))

    def unrelated(n):
        if n < 0:
            raise RuntimeError('negative')
        return n
    """
    lean = _lean(code)
    assert "fa3 is not importable" in lean and "negative" not in lean


def test_guards_in_protocol_dunders_and_implicitly_caught_classes_stay():
    code = """
    class A:
        def __getattr__(self, name):
            if name.startswith('_'):
                raise ValueError(name)
            return 1

        def __init__(self, n):
            if n < 0:
                raise ValueError(n)
            self.n = n

        def get(self, k):
            if k not in self.__dict__:
                raise AttributeError(k)
            return 2
    """
    lean = _lean(code)
    assert "raise ValueError(name)" in lean and "raise AttributeError(k)" in lean
    assert "raise ValueError(n)" not in lean  # __init__ checks its arguments: no protocol catches that


def test_the_scripts_main_reporting_a_bad_setting_protects_nothing():
    code = """
    class Cfg:
        def __init__(self, lr):
            if lr <= 0:
                raise ValueError('lr')
            self.lr = lr
    """
    main = """
    def main(argv):
        try:
            cfg = Cfg(float(argv[0]))
        except ValueError as e:
            print(e)
            return 2
        return 0
    """
    assert "raise ValueError('lr')" not in _lean(code, extra=main)
    recovers = main.replace("return 2\n        return 0", "cfg = Cfg(1.0)\n        return 0")
    assert "raise ValueError('lr')" in _lean(code, extra=recovers)



def test_a_handler_that_only_translates_the_error_goes_with_its_try_unless_a_recovery_could_see_it():
    code = """
    import json

    def header(raw):
        try:
            h = json.loads(raw)
        except ValueError as e:
            raise RuntimeError(f'corrupt header ({e})') from e
        return h

    def temp(path, data):
        try:
            path.write_bytes(data)
        except BaseException:
            path.unlink(missing_ok=True)
            raise

    def parse(raw):
        try:
            return int(raw)
        except ValueError as e:
            raise KeyError(raw) from e

    def lookup(raw):
        try:
            return parse(raw)
        except KeyError:
            return None
    """
    lean = _lean(code)
    assert "corrupt header" not in lean and "h = json.loads(raw)" in lean  # the try body stays, inlined
    assert "path.unlink(missing_ok=True)" in lean  # a bare re-raise after cleanup is not a translation
    assert "raise KeyError(raw) from e" in lean  # lookup recovers from what parse translates to: it stays
    ns: dict = {}
    exec(lean, ns)
    assert ns["header"]('{"a": 1}') == {"a": 1} and ns["lookup"]("x") is None and ns["lookup"]("7") == 7


def test_a_dead_pure_store_goes_with_the_loop_it_empties_and_nothing_read_or_impure_does():
    """What a removed guard leaves (`ok = isinstance(...)`, a loop computing only it) goes, to a fixed point; a
    store something reads (a nested scope, `locals()`, `global`), an impure value, a protected store stays."""
    code = """
    def f(state, path):
        kind, items = state['kind'], state.get('items', [])
        ok = isinstance(kind, str) and all(isinstance(i, int) for i in items)
        end = len(items) + 1
        span = end * 2
        n = 0
        for i in items:
            n += i > 0
        size = path.stat().st_size
        seen = len(items)
        g = lambda: seen
        return kind, g

    def h(x):
        y = len(x)
        return locals()

    def u(blob, fmt):
        head, size = fmt.unpack(blob)
        used, total = (len(blob) - size, blob[size:])
        first, mid, last = (int(blob[0]), int(blob[1]), fmt.tail(blob))
        return size, total, last

    def k(x):
        global z
        z = len(x)
        try:
            w = len(x)
        except TypeError:
            w = None
        return 1
    """
    lean = _lean(code)
    assert _same(lean, """
    def f(state, path):
        kind, items = state['kind'], state.get('items', [])
        size = path.stat().st_size
        seen = len(items)
        g = lambda: seen
        return kind, g

    def h(x):
        y = len(x)
        return locals()

    def u(blob, fmt):
        head, size = fmt.unpack(blob)
        total = blob[size:]
        last = fmt.tail(blob)
        return size, total, last

    def k(x):
        global z
        z = len(x)
        try:
            w = len(x)
        except TypeError:
            pass  # a dead store in the handler goes; the try body is protected
        return 1
    """), lean
    path = type("P", (), {"stat": lambda self: type("S", (), {"st_size": 3})()})()
    for text in (textwrap.dedent(code), lean):
        ns: dict = {}
        exec(text, ns)
        kind, g = ns["f"]({"kind": "a", "items": [1, -2]}, path)
        assert kind == "a" and g() == 2 and ns["h"]([1]) == {"x": [1], "y": 1}
        fmt = type("F", (), {"unpack": lambda self, b: (b[0], 1), "tail": lambda self, b: b[-1]})()
        assert ns["u"](b"\x05\x06\x07", fmt) == (1, b"\x06\x07", 7)


def test_a_parameter_nothing_reads_goes_with_the_pure_argument_of_every_direct_call():
    from submissions.lean import drop_unused_parameters

    lib = textwrap.dedent("""
    def scale(x, where, k=2):
        return x * k

    def noisy(x, where):
        return x

    def passed(x, where):
        return x

    def named(x, where):
        return x

    def nested(x, where):
        return lambda: where

    def called_by_main(x, where):
        return x
    """)
    user = textwrap.dedent("""
    from lib import scale, noisy, passed, named, nested, called_by_main

    def run(log):
        a = scale(1, 'artifact') + scale(2, where='x', k=3) + scale(3, 'y', 4)
        b = noisy(1, log.pop())
        c = list(map(passed, [1], ['p'])) + [passed(1, 'p')]
        return a, b, c, named(1, 'q'), 'see named', nested(1, 'n')()
    """)
    main = "from user import run\ncalled_by_main(1, 'm')\n"
    out = drop_unused_parameters({"lib": lib, "user": user}, [main])
    assert "def scale(x, k=2):" in out["lib"] and "scale(1) + scale(2, k=3) + scale(3, 4)" in out["user"]
    assert "def nested(where):" in out["lib"] and "nested('n')()" in out["user"]  # `where`: a nested scope reads it
    for kept in ("def noisy(x, where)", "def passed(x, where)", "def named(x, where)", "def called_by_main(x, where)"):
        assert kept in out["lib"], kept  # an impure argument, a value, a word of a string, the script's own code
    results = []
    for mods in ({"lib": lib, "user": user}, out):
        ns_lib: dict = {}
        exec(mods["lib"], ns_lib)
        ns_user: dict = {k: ns_lib[k] for k in ("scale", "noisy", "passed", "named", "nested", "called_by_main")}
        exec(mods["user"].split("\n", 2)[2], ns_user)
        results.append(ns_user["run"]([5]))
    assert results[0] == results[1] == (2 + 6 + 12, 1, [1, 1], 1, "see named", "n")


def test_a_dead_accumulator_goes_with_its_appends_and_what_they_leave_empty():
    """`errors = []` read only by `errors.append(<pure>)` (what `if errors: raise …` leaves): the list, its appends,
    the emptied `if`/`for` go; a list that is read, aliased, or appended an impure value stays."""
    code = """
    def check(cfg):
        errors = []
        for key in ('a', 'b'):
            if getattr(cfg, key) < 1:
                errors.append(f'{key} must be >= 1, got {getattr(cfg, key)}')
        if cfg.a > cfg.b:
            errors.append('a > b')
        if errors:
            raise ValueError('; '.join(errors))

    def kept(cfg, out, f):
        seen = []
        seen.append(cfg.a)
        shared = out
        shared.append(1)
        calls = []
        calls.append(f())
        return len(seen)
    """
    lean = _lean(code)
    assert _same(lean, """
    def check(cfg):
        pass

    def kept(cfg, out, f):
        seen = []
        seen.append(cfg.a)
        shared = out
        shared.append(1)
        calls = []
        calls.append(f())
        return len(seen)
    """), lean
    ns: dict = {}
    exec(lean, ns)
    out, made = [], []
    cfg = type("C", (), {"a": 2, "b": 3})
    assert ns["kept"](cfg, out, lambda: made.append(1)) == 1 and out == [1] and made == [1]


def test_calls_of_an_emptied_function_and_an_empty_post_init_go():
    """A checking function lean empties is no longer called (pure arguments, statement calls only); one used as a
    value, called for its value, or whose argument has an effect keeps its calls; an empty `__post_init__` of a
    class with bases stays (it may override one)."""
    code = """
    from dataclasses import dataclass

    def check(cfg):
        if cfg.a < 0:
            raise ValueError('a')

    def noted(cfg):
        if cfg.a < 0:
            raise ValueError('a')

    def touched(cfg):
        if cfg.a < 0:
            raise ValueError('a')

    @dataclass
    class Config:
        a: int = 1

        def __post_init__(self):
            check(self)

    class Base:
        def __post_init__(self):
            self.b = 2

    @dataclass
    class Sub(Base):
        a: int = 1

        def __post_init__(self):
            check(self)

    def run(cfg, log):
        check(cfg)
        x = noted(cfg)
        touched(log(cfg))
        return x
    """
    lean = _lean(code)
    tree = ast.parse(lean)
    classes = {n.name: n for n in tree.body if isinstance(n, ast.ClassDef)}
    assert not any(isinstance(s, ast.FunctionDef) for s in classes["Config"].body)
    assert any(isinstance(s, ast.FunctionDef) for s in classes["Sub"].body)  # Base's __post_init__ is overridden
    calls = {n.func.id for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)}
    assert "check" not in calls and "x = noted(cfg)" in lean and "touched(log(cfg))" in lean
    ns: dict = {}
    exec(lean, ns)
    logged = []
    assert ns["run"](ns["Config"](), logged.append) is None and len(logged) == 1
    assert not hasattr(ns["Sub"](), "b")  # as before: Sub's own (empty) __post_init__ runs, not Base's


def test_a_call_through_the_module_object_counts_as_a_direct_call():
    """`ex.f(1, 'w')` with `from pkg import ex` calls pkg.ex's `f`: its unused parameter goes with the argument;
    `o.g(…)` on some other object, which may be anything's `g`, keeps `g`'s parameters."""
    from submissions.lean import drop_unused_parameters

    lib = "def f(x, where):\n    return x + 1\n\ndef g(x, where):\n    return x\n"
    user = ("from pkg import ex\n\n"
            "def run(o):\n    return ex.f(1, 'w') + ex.f(x=2, where='v') + o.g(3, 'u') + ex.g(4, 't')\n")
    out = drop_unused_parameters({"pkg": "", "pkg.ex": lib, "user": user})
    assert "def f(x):" in out["pkg.ex"] and "ex.f(1) + ex.f(x=2)" in out["user"]
    assert "def g(x, where):" in out["pkg.ex"] and "o.g(3, 'u')" in out["user"]
    results = []
    for mods in ({"pkg.ex": lib, "user": user}, out):
        ex = types.ModuleType("ex")
        exec(mods["pkg.ex"], ex.__dict__)
        ns: dict = {"ex": ex}
        exec(mods["user"].split("\n", 2)[2], ns)
        results.append(ns["run"](types.SimpleNamespace(g=lambda x, w: x * 10)))
    assert results[0] == results[1] == 2 + 3 + 30 + 4


def test_a_guard_calling_a_pure_function_of_the_bundle_goes():
    """`valid(b)` whose body is `return <pure>` (or calls such a function) makes a pure condition; a function with
    statements, one whose name is rebound or a parameter somewhere, or one calling something impure does not."""
    from submissions.lean import pure_functions

    code = """
    def valid(bits):
        return isinstance(bits, int) and 2 <= bits <= 8

    def valid_pair(a, b=1):
        return valid(a) and valid(b)

    def logged(x):
        print(x)
        return x

    def calls_impure(x):
        return logged(x) > 0

    def shadowed(x):
        return x > 0

    def f(a, b, shadowed=shadowed):
        if not valid_pair(a, b):
            raise ValueError('bits')
        if not calls_impure(a):
            raise ValueError('impure')
        if not shadowed(a):
            raise ValueError('shadowed')
        return a + b
    """
    assert pure_functions([ast.parse(textwrap.dedent(code))]) == {"valid", "valid_pair"}
    lean = _lean(code)
    assert "'bits'" not in lean and "'impure'" in lean and "'shadowed'" in lean
    ns: dict = {}
    exec(lean, ns)
    assert ns["f"](3, 4) == 7


def test_a_dead_store_of_a_plain_dataclass_built_from_a_pure_function_through_its_module_goes():
    """`ctx = ex.Ctx(size=ex.sizer(c))` read by nothing: `Ctx` is a plain dataclass (its construction only stores),
    `sizer` returns a lambda (making one evaluates nothing but its defaults): the store goes. A dataclass with a
    `__post_init__` or a non-builtin default factory, and a lambda with an impure default, stay."""
    lib = textwrap.dedent("""
    from dataclasses import dataclass, field

    @dataclass
    class Ctx:
        size: int
        extra: dict = field(default_factory=dict)

    @dataclass
    class Checked:
        size: int

        def __post_init__(self):
            print(self.size)

    @dataclass
    class Made:
        items: list = field(default_factory=lambda: [print('x')])

    def sizer(c):
        return lambda q: len(q) + c
    """)
    user = textwrap.dedent("""
    from pkg import ex

    def run(c, log):
        ctx = ex.Ctx(size=ex.sizer(c))
        checked = ex.Checked(c)
        made = ex.Made()
        f = lambda q=log(c): q
        return c
    """)
    out = lean_sources({"pkg": "", "pkg.ex": lib, "user": user})["user"]
    assert "ctx =" not in out and "checked = ex.Checked(c)" in out and "made = ex.Made()" in out
    assert "f = lambda" in out
