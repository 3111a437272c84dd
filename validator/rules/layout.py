"""Packaging rules: FILES.REQUIRED, FILES.RUNS_IN_FOLDER (static part), FILES.PR_SCOPE, FILES.PLAIN_TEXT."""

from __future__ import annotations

import ast
import datetime
import re
import sys
import unicodedata
from pathlib import Path

from validator.logs import find_logs, is_log_file
from validator.rules.base import (
    ERROR,
    FAIL,
    INFO,
    PASS,
    RUN_DIR_FILES,
    SKIP,
    WARN,
    Finding,
    FolderContext,
    Rule,
    script_text,
)
from validator.rules.code import CodeUnit, code_units, unread_code
from validator.untrusted_json import run_dir_recipe

BASE_PACKAGES = {"numpy", "tqdm", "torch", "huggingface_hub", "kernels", "setuptools", "typing_extensions",
                 "datasets", "tiktoken", "sentencepiece"}
# A PEP 508 requirement without a URL: a name, extras, version specifiers, an environment marker.
REQUIREMENT_RX = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*\s*(\[[\w.,\s-]*\])?\s*([<>=!~]=?\s*[\w.*+!-]+\s*,?\s*)*"
                            r"(;.*)?$")
NAME_RX = re.compile(r"^\d{4}-\d{2}-\d{2}_[A-Za-z0-9._+-]+$")  # as the rulebook writes it; checked as ASCII_NAME
# The same, read strictly: ASCII digits (`\d` takes '٢٠٢٦'), the whole name (`$` takes a trailing newline)
ASCII_NAME = re.compile(r"(?P<date>[0-9]{4}-[0-9]{2}-[0-9]{2})_[A-Za-z0-9._+-]+")
FIRST_RECORD = datetime.date(2026, 3, 1)  # the challenge's first records are dated 2026-03-17
# What a PR's review reads as the submission itself: code, JSON, logs, README and requirements (`shipped_kind`).
SHIPPED_SUFFIXES = {".py", ".json", ".md"}


def imported_modules(tree: ast.AST) -> set[str]:
    """Top-level module names imported anywhere in a module (absolute imports only)."""
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            out.add(node.module.split(".")[0])
    return out


def recipe_errors(recipe: dict, plugin_files: tuple[str, ...] = ()) -> list[str]:
    """A run's configuration resolved as `pgolf eval` resolves it (the built-in plugins, entry points and the given
    --plugin-file's; environment ignored): the errors. An unknown plugin or a setting its plugin refuses fails here
    as it fails there."""
    from core.config import ConfigError, resolve
    from core.registry import PluginError
    from plugins.lib.loading import load_registry

    try:
        registry = load_registry(list(plugin_files))
        resolve(plugin_config_classes=registry.config_classes(), recipe={**recipe, "source": "config.json"}, env={},
                check_plugins=registry.check, check_settings=registry.check_settings)
    except ConfigError as exc:
        return list(exc.errors)
    except PluginError as exc:  # a --plugin-file that does not load
        return [str(exc)]
    return []


def check_required(ctx: FolderContext) -> list[Finding]:
    r = RULES[0]
    if ctx.is_run_dir:
        missing = [f for f in RUN_DIR_FILES if not (ctx.root / f).is_file()]
        if missing:
            return [r.finding(FAIL, "pgolf run directory is missing files", expected=list(RUN_DIR_FILES),
                              found=missing)]
        try:
            errors = recipe_errors(run_dir_recipe(ctx.root), ctx.plugin_files)
        except ValueError as exc:
            return [r.finding(FAIL, str(exc).replace(str(ctx.root) + "/", ""), file="config.json",
                              expected='{"config": {...}}')]
        if errors:  # `pgolf eval`, `bundle` and `record` refuse it: so does the validator
            return [r.finding(FAIL, f"the configuration does not resolve: {errors[0]}" + (
                f" (+{len(errors) - 1} more)" if len(errors) > 1 else ""), file="config.json")]
        return [r.finding(PASS, "run directory has " + ", ".join(RUN_DIR_FILES))]
    out: list[Finding] = []
    if not (ctx.root / "README.md").is_file():
        out.append(r.finding(FAIL, "README.md missing", file="README.md"))
    sp = ctx.submission_path
    if sp is None:
        out.append(r.finding(FAIL, "submission.json missing", file="submission.json"))
    elif sp.name != "submission.json":
        out.append(r.finding(WARN, f"submission JSON is named {sp.name}, expected submission.json",
                             severity=WARN, file=sp.name, expected="submission.json", found=sp.name, style=True))
    if ctx.script_path is None:
        alts = sorted(str(p) for p in ctx.files if p.name.startswith("train") and p.suffix == ".py")
        out.append(r.finding(FAIL, "train_gpt.py missing" + (f" (ships {', '.join(alts)})" if alts else ""),
                             file="train_gpt.py", found=alts or None))
    if not find_logs(ctx.root):
        out.append(r.finding(FAIL, "no train log (*.log / *.txt) in the folder"))
    if isinstance(ctx.tree, ast.Module) and not (ctx.root / "requirements.txt").is_file():
        mods = imported_modules(ctx.tree)
        local = {p.stem for p in ctx.root.glob("*.py")} | {p.name for p in ctx.root.iterdir() if p.is_dir()}
        extra = sorted(m for m in mods if m not in sys.stdlib_module_names and m not in BASE_PACKAGES
                       and m not in local and m != "__future__")
        if extra:
            out.append(r.finding(WARN, "imports packages outside the base image but ships no requirements.txt",
                                 severity=WARN, file="train_gpt.py", expected="requirements.txt", found=extra,
                                 style=True))
    out += _requirement_findings(r, ctx.root / "requirements.txt")
    for link in (p for p in linked_files(ctx.root) if shipped_kind(p)):
        out.append(r.finding(FAIL, f"{link} is a symbolic link: a PR ships the link, not the bytes the validator and "
                             "the run read through it (commit the file itself)", file=str(link)))
    return out or [r.finding(PASS, "README.md, submission.json, train_gpt.py and logs present")]


def _requirement_findings(r: Rule, path: Path) -> list[Finding]:
    """A requirements.txt line that installs from outside the package index (a URL, a VCS or local path, a pip
    option such as --extra-index-url or -e) fails: what it fetches can carry data or code no review sees. A line
    that is not a requirement at all is a WARN (pip would refuse the file). Comments as pip reads them."""
    if not path.is_file() or path.is_symlink():
        return []
    out = []
    for no, raw in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), start=1):
        line = re.sub(r"(^|\s+)#.*$", "", raw).strip()
        if not line:
            continue
        if line.startswith("-") or "://" in line or "@" in line or line.startswith((".", "/", "~")) \
                or re.match(r"^(git|hg|svn|bzr)\+", line):
            out.append(r.finding(FAIL, f"requirements.txt installs from outside the package index: {line[:80]!r} "
                                 "(a URL, a path or a pip option fetches what no review sees)",
                                 file="requirements.txt", line=no, expected="package names with versions"))
        elif not REQUIREMENT_RX.match(line):
            out.append(r.finding(WARN, f"requirements.txt line is not a requirement pip reads: {line[:80]!r}",
                                 severity=WARN, file="requirements.txt", line=no, style=True))
    return out


def shipped_kind(rel: Path) -> bool:
    """Whether the folder's file `rel` is part of what a review reads (code, JSON, README, requirements, logs)."""
    return rel.suffix.lower() in SHIPPED_SUFFIXES or is_log_file(rel) or rel.name.lower() == "requirements.txt"


def linked_files(root: Path) -> list[Path]:
    """The symbolic links under `root` (relative, sorted; dangling ones too): git stores a link as its target's
    path, so what the folder reads through it is not what a PR ships."""
    return sorted(p.relative_to(root) for p in root.rglob("*") if p.is_symlink())


def check_runs_in_folder(ctx: FolderContext) -> list[Finding]:
    r = RULES[1]
    if ctx.is_run_dir:
        return [r.finding(SKIP, "pgolf run directory: code is pgolf itself")]
    units = code_units(ctx)
    if not units:
        return [r.finding(SKIP, "no train_gpt.py")]
    out = [f for u in units for f in _unreadable(r, u, wrapped=u.name == "train_gpt.py" and ctx.script_source[1])]
    out += [r.finding(FAIL, f"runs code the validator cannot read: `{call}` (exec/eval/compile of anything but a "
                      "shipped file's text, a module loaded by a computed name, code built from bytes)",
                      file=u.name, line=line, expected="code in the folder's files, or a wrapper it can decode")
            for u in units if not u.problem for line, call in unread_code(u, units)]
    out += _shadowing_or_packed(r, ctx)
    if any(f.status == FAIL for f in out) or not isinstance(units[0].tree, ast.Module):
        return out
    for node in ast.walk(units[0].tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)) and getattr(node, "level", 0):
            out.append(r.finding(WARN, "relative import: the script is not runnable as a plain file",
                                 severity=WARN, file="train_gpt.py", line=node.lineno))
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.startswith("../"):
            out.append(r.finding(WARN, f"path outside the folder: {node.value!r}", severity=WARN,
                                 file="train_gpt.py", line=node.lineno))
    note = " (LZMA wrapper decoded)" if ctx.script_source[1] else ""
    helpers = f", with the {len(units) - 1} local file(s) it runs" if len(units) > 1 else ""
    return out or [r.finding(PASS, f"train_gpt.py parses{note}{helpers}; dynamic smoke run not performed (static "
                             "only)")]


# Code shipped in a form the scans cannot read, or put where Python finds it before the real thing.
PACKED_CODE = {".zip", ".egg", ".whl", ".pyc", ".pyo", ".pyz", ".pth", ".so", ".pyd", ".dylib", ".dll"}
# native code whatever its name (ctypes loads any file): ELF, Mach-O (32/64-bit, both orders, fat); PE by suffix
NATIVE_MAGIC = (b"\x7fELF", b"\xfe\xed\xfa\xce", b"\xfe\xed\xfa\xcf", b"\xce\xfa\xed\xfe",
                b"\xcf\xfa\xed\xfe", b"\xca\xfe\xba\xbe")
AUTO_IMPORTED = {"sitecustomize", "usercustomize"}
PGOLF_PACKAGES = {"core", "plugins", "pgolf", "validator", "submissions", "dataprep", "tests", "benchmarks"}


def _shadowing_or_packed(r: Rule, ctx: FolderContext) -> list[Finding]:
    """A shipped `.py` named like a module the run imports from its environment (`typing_extensions.py`: the
    script's folder comes first on sys.path, so `import torch` runs it) and code in archives or bytecode (a zip on
    sys.path, a .pyc, a .pth): code no scan reads. Names are checked against this interpreter's importable modules."""
    out = []
    for rel in ctx.files:
        if rel.suffix.lower() in PACKED_CODE or _native(ctx.root / rel) or _zip_of_code(ctx.root / rel):
            out.append(r.finding(FAIL, f"{rel} is packed or compiled code (archive, bytecode, .pth, a native library) "
                                 "the validator cannot read", file=str(rel), expected="plain .py sources"))
        elif rel.suffix == ".py" and len(rel.parts) == 1 and rel.stem != "train_gpt" and (
                rel.stem in AUTO_IMPORTED or rel.stem in sys.stdlib_module_names or _importable(rel.stem)):
            out.append(r.finding(FAIL, f"{rel} shadows the module {rel.stem!r}: an import of it (by the script or a "
                                 "library) runs this file instead", file=str(rel), expected="a helper name no "
                                 "installed module has"))
    return out


def _zip_of_code(path: Path) -> bool:
    """A zip archive, whatever its name, holding Python or native code (zipimport runs it from sys.path: a `.png`
    that is a zip of `kern.py`); a NumPy `.npz` holds `.npy` arrays only."""
    import zipfile

    try:
        with path.open("rb") as f:
            if f.read(4) != b"PK\x03\x04":
                return False
        with zipfile.ZipFile(path) as z:
            return any(n.lower().endswith((".py", ".pyc", ".so", ".pyd", ".pth")) for n in z.namelist())
    except (OSError, zipfile.BadZipFile, ValueError, EOFError):
        return True  # zip-headed bytes that no zip reader takes: code may hide there; nothing can be read
    return False


def _native(path: Path) -> bool:
    """A compiled library or executable (NATIVE_MAGIC), by its first bytes."""
    try:
        with path.open("rb") as f:
            head = f.read(4)
    except OSError:
        return False
    return head.startswith(NATIVE_MAGIC)


def _importable(name: str) -> bool:
    """Whether `name` is a module this interpreter finds (pgolf's own packages aside: a records folder's run does not
    have them)."""
    import importlib.util

    if name in PGOLF_PACKAGES:
        return False
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def _unreadable(r: Rule, unit: CodeUnit, wrapped: bool) -> list[Finding]:
    """Why the static rules cannot read a code unit: a payload it cannot decode, code beside it, an encoding that reads
    one way and runs another (fail closed: every rule would read something else than what runs), or a syntax error
    (a WARN where it is likely PEP 701 syntax)."""
    if unit.problem:
        return [r.finding(FAIL, f"runs code the validator cannot read as it runs ({unit.problem})",
                          file=unit.name, expected="a payload that decodes (pgolf's code_wrapper forms, or "
                          "LZMA/base85 literals as the records ship)")]
    if not isinstance(unit.tree, SyntaxError):
        return []
    exc = unit.tree
    msg = f"does not parse{' (after unwrapping)' if wrapped else ''}: {exc.msg} (line {exc.lineno})"
    if sys.version_info < (3, 12) and "f-string" in (exc.msg or ""):
        return [r.finding(WARN, msg + f"; likely PEP 701 f-string syntax needing Python >= 3.12 "
                          f"(checked with {sys.version_info.major}.{sys.version_info.minor})",
                          severity=WARN, file=unit.name, line=exc.lineno)]
    return [r.finding(FAIL, msg, file=unit.name, line=exc.lineno)]


def check_name(ctx: FolderContext) -> list[Finding]:
    r = RULES[2]
    if ctx.is_run_dir:
        return [r.finding(SKIP, "pgolf run directory", severity=INFO)]
    name = ctx.root.resolve().name
    out = [r.finding(FAIL, f"{what}: a PR adds one records folder (PR #1851 had to split one out)",
                     file=str(rel)) for rel, what in nested_records(ctx)]
    out += [r.finding(FAIL, f"{' and '.join(map(str, group))}: names equal but for case (one file on macOS and Windows "
                      "checkouts: readers see different files)", file=str(group[0])) for group in case_twins(ctx)]
    m = ASCII_NAME.fullmatch(name)
    try:
        date = datetime.date.fromisoformat(m["date"]) if m else None
    except ValueError:
        date = None
    if date is None or not FIRST_RECORD <= date <= datetime.date.today() + datetime.timedelta(days=1):
        why = "does not match YYYY-MM-DD_description (ASCII)" if m is None else f"is dated {m['date']}, no real " \
              f"date between {FIRST_RECORD} and today"
        return [r.finding(FAIL, f"folder name {why}", expected=NAME_RX.pattern, found=name), *out]
    return out or [r.finding(PASS, f"folder name {name!r} matches YYYY-MM-DD_description")]


def nested_records(ctx: FolderContext) -> list[tuple[Path, str]]:
    """Sub-folders that are records folders of their own (a submission.json or train_gpt.py below the top)."""
    subs = sorted({rel.parent for rel in ctx.files if len(rel.parts) > 1 and (
        rel.name == "train_gpt.py" or (rel.name.startswith("submission") and rel.suffix == ".json"))})
    return [(d, "a second records folder inside this one") for d in subs]


def case_twins(ctx: FolderContext) -> list[list[Path]]:
    """Groups of paths that differ only in letter case (or Unicode normalisation)."""
    groups: dict[str, list[Path]] = {}
    for rel in ctx.files:
        groups.setdefault(unicodedata.normalize("NFKC", str(rel)).casefold(), []).append(rel)
    return [g for g in groups.values() if len(g) > 1]


# Characters on which two readers of one text disagree, or that hide text from a reviewer (THREATS.md §4): Python's
# str.splitlines() (every log parser here) breaks a line at \r, \v, \f, \x1c-\x1e, \x85, U+2028 and U+2029 where git,
# grep and GitHub see one line; a terminal lets \r, \b and ANSI escapes overwrite what was printed; bidi controls
# reorder what a reviewer sees of code (Trojan Source, CVE-2021-42574); zero-width characters make two names look
# alike. Tab, newline and the CR of a CRLF are plain text; a byte-order mark may open a file.
HIDING = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u2028\u2029]|\r(?!\n)|(?<!^)\ufeff")
BIDI = set("\u061c\u200e\u200f") | {chr(c) for c in (*range(0x202A, 0x202F), *range(0x2066, 0x206A))}


def hidden_character(text: str, markdown: bool = False) -> tuple[int, str] | None:
    """(line, description) of the first character of `text` that readers disagree on, or None. Every Unicode format
    character (category Cf) counts, except in Markdown, where only the bidi controls do (emoji need the joiners)."""
    hits = [m.start() for m in [HIDING.search(text)] if m]
    for ch in {c for c in text if c > "\x9f"} - {"\ufeff"}:
        if ch in BIDI or (not markdown and unicodedata.category(ch) == "Cf"):
            hits.append(text.index(ch))
    if not hits:
        return None
    at = min(hits)
    ch = text[at]
    name = unicodedata.name(ch, "") or {"\r": "CARRIAGE RETURN not before a line feed"}.get(ch, "a control character")
    return text.count("\n", 0, at) + 1, f"U+{ord(ch):04X} {name}"


def check_plain_text(ctx: FolderContext) -> list[Finding]:
    r = RULES[3]
    units = {u.name: u for u in code_units(ctx)}
    out: list[Finding] = [r.finding(FAIL, f"{hit[1]} in a file name: two names that look alike (a zero-width "
                                    "character, a control character)", file=ascii(str(rel)))
                          for rel in ctx.files if (hit := hidden_character(str(rel)))]
    checked = 0
    for rel in (p for p in ctx.files if shipped_kind(p) or p.suffix == ".jsonl"):
        name = str(rel)
        if name in units:
            text = units[name].source  # a wrapper's payload, decoded: its latin-1 digits are not text
        elif rel.suffix == ".py":
            text = script_text(ctx.root / rel)
        else:
            data = (ctx.root / rel).read_bytes()
            try:
                text = data.decode("utf-8")
            except UnicodeDecodeError as exc:
                out.append(r.finding(FAIL, f"not UTF-8 text (byte {exc.start:,}): readers decode it differently",
                                     file=name, expected="UTF-8"))
                continue
        checked += 1
        hit = hidden_character(text, markdown=rel.suffix.lower() == ".md")
        if hit:
            out.append(r.finding(FAIL, f"{hit[1]}: a character readers disagree on (Python's splitlines() breaks lines "
                                 "where git and GitHub do not; terminals overwrite text; bidi controls reorder code)",
                                 file=name, line=hit[0], expected="plain text: tab, newline, CRLF, printable"))
    return out[:8] or [r.finding(PASS, f"{checked} text file(s) are plain UTF-8 text (no control, bidi or "
                                 "zero-width characters)")]


RULES = [
    Rule("FILES.REQUIRED", "README.md, submission.json, train log(s), train_gpt.py (+ requirements.txt): files, "
         "not links",
         "README 'Submission Process' items 1-4; FAQ 'Can I import XYZ?'", ERROR, check_required,
         lower="no requirements.txt for non-base imports, submission_<variant>.json: style (WARN; ERROR with "
               "--strict)"),
    Rule("FILES.RUNS_IN_FOLDER", "train_gpt.py compiles inside the records folder (static part)",
         "README Submission Process item 4", ERROR, check_runs_in_folder,
         lower="PEP 701 syntax on Python < 3.12, relative imports, paths outside the folder: WARN"),
    Rule("FILES.PR_SCOPE", "one new folder named YYYY-MM-DD_description (static part: the name)",
         "README 'only adds a new folder'; commit e64813770", ERROR, check_name),
    Rule("FILES.PLAIN_TEXT", "code, logs, JSON and README are plain text every reader sees alike",
         "Trojan Source (CVE-2021-42574); Python str.splitlines vs git line breaks", ERROR, check_plain_text),
]
