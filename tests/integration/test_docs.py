#!/usr/bin/env python3
"""test_docs.py — the documentation matches the code.

TAP, like every program tests/run-tests starts: "1..N", then "ok N - ..." or
"not ok N - ..." with the details as "# " lines; the exit status is 0 only
when every check passed.

Checks:
  * every row of the settings table in src/settings.c has an "@item #:NAME"
    in doc/settings.texi that gives the row's default text (or, for a
    default computed at run time, says "Default:"), and settings.texi has no
    item for a setting the table does not know;
  * every procedure in the #:export list of scheme/guillemot.scm, and every
    one it re-exports from another module (its #:re-export list, such as the
    procedures of (guillemot address)), has a @deffn (or @deffnx) in
    doc/guillemot.texi;
  * every subcommand and every option that `$GUILLEMOT --help` lists appears
    in doc/guillemot.8;
  * every setting has a paragraph (".TP" then ".BR #:NAME") in
    doc/guillemot.scm.5, and every exported and re-exported procedure
    appears in it;
  * when the tools are installed: makeinfo builds doc/guillemot.texi without
    a warning, and groff formats both man pages without a warning.

Environment: top_srcdir (default: two directories up), GUILLEMOT (default:
the guillemot binary in top_builddir or top_srcdir).
"""

import os
import re
import shutil
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
TOP_SRCDIR = os.path.abspath(os.environ.get("top_srcdir") or os.path.join(HERE, "..", ".."))
TOP_BUILDDIR = os.path.abspath(os.environ.get("top_builddir") or TOP_SRCDIR)
GUILLEMOT = os.environ.get("GUILLEMOT") or os.path.join(TOP_BUILDDIR, "guillemot")

results = []                    # (ok, description, [detail lines], skip reason)


def check(ok, description, details=(), skip=None):
    results.append((bool(ok), description, list(details), skip))


def read(*parts):
    with open(os.path.join(TOP_SRCDIR, *parts), encoding="utf-8") as f:
        return f.read()


def man_text(source):
    """Man page source with the escapes that matter for matching undone."""
    text = source.replace("\\-", "-").replace("\\(em", "--")
    return re.sub(r"\\f[BIRP]|\\f\(..|\\&", "", text)


# ---- The sources of truth ----------------------------------------------------

# Rows look like:  { "name", GM_SETTING_TYPE, OFF (field), "default" or NULL, ...
SETTING_ROW = re.compile(
    r'^\s*\{\s*"([^"]+)",\s*GM_SETTING_([A-Z_]+),\s*OFF\s*\(\s*\w+\s*\),\s*'
    r'(NULL|"((?:[^"\\]|\\.)*)")', re.M)


def settings_table():
    source = read("src", "settings.c")
    start = source.find("static const GmSetting settings[]")
    end = source.find("};", start)
    rows = []
    for m in SETTING_ROW.finditer(source[start:end] if start >= 0 else source):
        default = None if m.group(3) == "NULL" else bytes(m.group(4), "utf-8").decode("unicode_escape")
        rows.append((m.group(1), m.group(2), default))
    return rows


def module_names(clause):
    """The names in the CLAUSE list (#:export, #:re-export) of the
    define-module form of scheme/guillemot.scm, in order."""
    source = read("scheme", "guillemot.scm")
    m = re.search(r"%s\s*\(" % re.escape(clause), source)
    if not m:
        return []
    depth, i = 1, m.end()
    while depth and i < len(source):
        depth += {"(": 1, ")": -1}.get(source[i], 0)
        i += 1
    body = re.sub(r";[^\n]*", "", source[m.end():i - 1])
    return body.split()


def exported_procedures():
    return module_names("#:export")


def reexported_procedures():
    return module_names("#:re-export")


def help_entries():
    """Subcommands and options listed by `guillemot --help`."""
    out = subprocess.run([GUILLEMOT, "--help"], capture_output=True, text=True, timeout=30)
    commands, options, section = [], [], None
    for line in out.stdout.splitlines():
        if line.rstrip().endswith(":") and not line.startswith(" "):
            section = line.strip().rstrip(":").lower()
            continue
        if not line.startswith("  "):
            continue
        if section == "commands":
            commands.append(line.split()[0])
        elif section == "options":
            synopsis = re.split(r"\s{2,}", line.strip())[0]
            options.extend(re.findall(r"(?<![\w-])(--?[A-Za-z][\w-]*)", synopsis))
    return out.returncode, commands, sorted(set(options))


# ---- Checks ------------------------------------------------------------------

def texi_items(texi):
    """@item #:NAME -> the text up to the next @item or @end table."""
    items = {}
    for m in re.finditer(r"^@itemx?\s+#:(\S+)\s*\n(.*?)(?=^@itemx?\s|^@end table)", texi, re.M | re.S):
        items[m.group(1)] = m.group(2)
    return items


def texi_unescape(text):
    return text.replace("@@", "@").replace("@{", "{").replace("@}", "}")


def check_settings():
    rows = settings_table()
    check(len(rows) >= 10, "src/settings.c: the settings table parses (%d rows)" % len(rows))
    texi = read("doc", "settings.texi")
    items = texi_items(texi)
    for name, kind, default in rows:
        item = items.get(name)
        if item is None:
            check(False, "settings.texi documents #:%s" % name,
                  ["no '@item #:%s' in doc/settings.texi" % name])
            continue
        plain = texi_unescape(item)
        if default is None:
            ok = "Default:" in plain
            want = "a 'Default:' sentence (computed default)"
        else:
            ok = re.search(r"Default:\s*@code\{%s\}" % re.escape(default), item) is not None \
                or ("Default: " + default) in plain
            want = "'Default: @code{%s}'" % default
        check(ok, "settings.texi documents #:%s with its default" % name,
              ["the item does not contain %s" % want])
    known = {name for name, _, _ in rows}
    stale = sorted(set(items) - known)
    check(not stale, "settings.texi has no item for an unknown setting",
          ["not in src/settings.c: " + ", ".join("#:" + s for s in stale)])
    return rows


def check_deffns(exports, reexports):
    texi = read("doc", "guillemot.texi")
    for name in re.findall(r"^@include\s+(\S+)\s*$", texi, re.M):
        if os.path.exists(os.path.join(TOP_SRCDIR, "doc", name)):
            texi += read("doc", name)
    documented = set()
    for m in re.finditer(r"^@deffnx?\s+(?:\{[^}]*\}|\S+)\s+(\S+)", texi, re.M):
        documented.add(m.group(1))
    check(exports, "scheme/guillemot.scm: the #:export list parses (%d names)" % len(exports))
    check(reexports, "scheme/guillemot.scm: the #:re-export list parses (%d names)" % len(reexports))
    for name in exports:
        check(name in documented, "guillemot.texi has a @deffn for %s" % name,
              ["no '@deffn {...} %s' in doc/guillemot.texi" % name])
    for name in reexports:
        check(name in documented, "guillemot.texi has a @deffn for %s (re-exported)" % name,
              ["no '@deffn {...} %s' in doc/guillemot.texi" % name])


def check_man8():
    try:
        status, commands, options = help_entries()
    except (OSError, subprocess.SubprocessError) as e:
        check(False, "%s --help runs" % GUILLEMOT, [str(e)])
        return
    check(status == 0 and commands, "guillemot --help lists subcommands (%s)" % ", ".join(commands),
          ["exit status %d" % status])
    man = man_text(read("doc", "guillemot.8"))
    for command in commands:
        found = re.search(r"(?<![\w-])%s(?![\w-])" % re.escape(command), man) is not None
        check(found, "guillemot.8 documents the subcommand %s" % command,
              ["'%s' does not appear in doc/guillemot.8" % command])
    for option in options:
        found = re.search(r"(?<![\w-])%s(?![\w-])" % re.escape(option), man) is not None
        check(found, "guillemot.8 documents the option %s" % option,
              ["'%s' does not appear in doc/guillemot.8" % option])


def check_man5(rows, exports, reexports):
    man = man_text(read("doc", "guillemot.scm.5"))
    # Each setting is the tag of its own paragraph: ".TP" then ".BR #:name ...".
    missing = [name for name, _, _ in rows
               if not re.search(r"^\.TP\n\.B[RI]?\s+#:%s(?![\w-])" % re.escape(name), man, re.M)]
    check(not missing, "guillemot.scm.5 lists every setting",
          ["missing: " + ", ".join("#:" + m for m in missing)])
    missing = [name for name in exports
               if re.search(r"(?<![\w-])%s(?![\w?-])" % re.escape(name), man) is None]
    check(not missing, "guillemot.scm.5 lists every exported procedure",
          ["missing: " + ", ".join(missing)])
    missing = [name for name in reexports
               if re.search(r"(?<![\w-])%s(?![\w?-])" % re.escape(name), man) is None]
    check(not missing, "guillemot.scm.5 lists every re-exported procedure",
          ["missing: " + ", ".join(missing)])


def check_tools():
    makeinfo = shutil.which("makeinfo")
    if makeinfo and os.path.exists(os.path.join(TOP_SRCDIR, "doc", "version.texi")):
        with tempfile.TemporaryDirectory() as tmp:
            out = subprocess.run([makeinfo, "--no-split", "-I", os.path.join(TOP_SRCDIR, "doc"),
                                  "-o", os.path.join(tmp, "guillemot.info"),
                                  os.path.join(TOP_SRCDIR, "doc", "guillemot.texi")],
                                 capture_output=True, text=True, timeout=120)
        messages = out.stderr.strip().splitlines()
        check(out.returncode == 0 and not messages, "makeinfo doc/guillemot.texi: no warning",
              messages[:20] + ["exit status %d" % out.returncode])
    else:
        check(True, "makeinfo doc/guillemot.texi: no warning",
              skip="makeinfo or doc/version.texi (made by the build) missing")
    groff = shutil.which("groff")
    for page in ("guillemot.8", "guillemot.scm.5"):
        if not groff:
            check(True, "groff -man -ww doc/%s: no warning" % page, skip="groff missing")
            continue
        out = subprocess.run([groff, "-man", "-Tutf8", "-ww", "-z",
                              os.path.join(TOP_SRCDIR, "doc", page)],
                             capture_output=True, text=True, timeout=60)
        messages = out.stderr.strip().splitlines()
        check(out.returncode == 0 and not messages, "groff -man -ww doc/%s: no warning" % page,
              messages[:20])


def main():
    try:
        rows = check_settings()
    except OSError as e:
        check(False, "settings table and doc/settings.texi are readable", [str(e)])
        rows = []
    try:
        exports = exported_procedures()
        reexports = reexported_procedures()
        check_deffns(exports, reexports)
    except OSError as e:
        check(False, "scheme/guillemot.scm and doc/guillemot.texi are readable", [str(e)])
        exports, reexports = [], []
    try:
        check_man8()
    except OSError as e:
        check(False, "doc/guillemot.8 is readable", [str(e)])
    try:
        check_man5(rows, exports, reexports)
    except OSError as e:
        check(False, "doc/guillemot.scm.5 is readable", [str(e)])
    check_tools()

    print("1..%d" % len(results))
    failed = 0
    for n, (ok, description, details, skip) in enumerate(results, 1):
        if skip:
            print("ok %d - %s # SKIP %s" % (n, description, skip))
        elif ok:
            print("ok %d - %s" % (n, description))
        else:
            failed += 1
            print("not ok %d - %s" % (n, description))
            for line in details:
                print("# " + line)
    sys.stdout.flush()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
