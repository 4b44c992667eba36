#!/usr/bin/env python3
"""The configuration table of deploy/CONFIG.md, generated from `attnd --help`.

attnd's option table (service/config.c) is the one source: every flag, its
ATTND_* variable, its value and its meaning. This script renders --help as
a Markdown table between the markers in deploy/CONFIG.md.

  deploy/config_table.py ATTND            rewrite the table in deploy/CONFIG.md
  deploy/config_table.py --check ATTND    exit 1 (with a diff) when it is stale

tests/deploy/test_config_table.py runs the check, so adding a flag to attnd
without regenerating the table fails CTest (and CI).
"""
import difflib
import os
import re
import subprocess
import sys

BEGIN = "<!-- BEGIN attnd --help table (deploy/config_table.py; do not edit by hand) -->"
END = "<!-- END attnd --help table -->"
LINE = re.compile(r"^  (--[a-z0-9-]+)(?: (\S+))?  +(.*?)(?: \[(ATTND_[A-Z0-9_]+)\])?$")


def options(attnd):
    """[(flag, arg, variable, meaning)] in --help's order."""
    out = subprocess.run([attnd, "--help"], capture_output=True, text=True, check=True,
                         timeout=60).stdout
    rows = []
    for line in out.splitlines():
        m = LINE.match(line)
        if m:
            rows.append((m.group(1), m.group(2) or "", m.group(4) or "", m.group(3)))
        elif line.startswith("  --"):
            raise SystemExit(f"config_table.py: cannot parse --help line: {line!r}")
    if not rows:
        raise SystemExit("config_table.py: no options in attnd --help")
    return rows


def cell(s):
    return s.replace("|", "\\|")


def table(rows):
    lines = ["| flag | variable | value | meaning |", "| --- | --- | --- | --- |"]
    for flag, arg, var, meaning in rows:
        lines.append(f"| `{flag}` | {f'`{var}`' if var else '(flag only)'} | "
                     f"{f'`{cell(arg)}`' if arg else ''} | {cell(meaning)} |")
    return "\n".join(lines)


def render(doc, rows):
    if BEGIN not in doc or END not in doc:
        raise SystemExit("config_table.py: CONFIG.md lacks the table markers")
    head, rest = doc.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{BEGIN}\n{table(rows)}\n{END}{tail}"


def main(argv):
    check = "--check" in argv
    args = [a for a in argv if a != "--check"]
    if len(args) != 1:
        raise SystemExit(__doc__)
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "CONFIG.md")
    doc = open(path).read()
    new = render(doc, options(args[0]))
    if not check:
        if new != doc:
            open(path, "w").write(new)
        return 0
    if new == doc:
        print("deploy/CONFIG.md matches attnd --help")
        return 0
    sys.stdout.writelines(difflib.unified_diff(doc.splitlines(True), new.splitlines(True),
                                               "deploy/CONFIG.md", "from attnd --help"))
    print("deploy/CONFIG.md is stale: run deploy/config_table.py build/service/attnd",
          file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
