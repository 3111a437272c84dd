"""What Python's json parser raises on a text a user or a submission wrote: `JSON_ERRORS` (THREATS.md §4).

`json.JSONDecodeError` alone is not enough. A text that is not UTF-8 raises UnicodeDecodeError, an integer longer than
`sys.get_int_max_str_digits()` (4,300) digits a plain ValueError, and nesting deeper than the interpreter's recursion
limit (`[` × 100,000) RecursionError, which escaped as a traceback before. Every reader of config.json, metrics.json,
status.json, events.jsonl or submission.json catches these; core (a recipe's TOML, an artifact header, a `--set`
list) and dataprep (a JSONL corpus), which sit below this package, name the same pair where they parse.
"""

JSON_ERRORS = (ValueError, RecursionError)
