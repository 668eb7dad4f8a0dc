"""String nodes (ComfyUI's utils/string menu): case, trim, substring, length, replace, compare and
regular expressions, with Python's string and `re` semantics as ComfyUI uses them.

Regex Match and Regex Extract treat an invalid pattern as "no match" (False, ""), as ComfyUI does;
Regex Replace reports it as an error.
"""
from __future__ import annotations

import re

from graph.contract import Boolean, Choice, Int, Node, Output, String

STRING_MODULE = "comfy_extras.nodes_string"
CATEGORY = "utils/string"


def Text(name: str) -> object:
    """A multiline text box without a default, as ComfyUI's string nodes declare theirs."""
    return String(name, None, multiline=True)


class _StringNode(Node):
    category = CATEGORY
    outputs = (Output("STRING"),)


CASES = {"UPPERCASE": str.upper, "lowercase": str.lower, "Capitalize": str.capitalize, "Title Case": str.title}


class CaseConverter(_StringNode):
    comfy_function = "execute"
    comfy_module = STRING_MODULE
    display_name = "Case Converter"
    inputs = (Text("string"), Choice("mode", list(CASES)))

    def run(self, ctx, string, mode):
        convert = CASES.get(mode)
        return (convert(string) if convert else string,)


TRIMS = {"Both": str.strip, "Left": str.lstrip, "Right": str.rstrip}


class StringTrim(_StringNode):
    """Removes whitespace from both ends, the start or the end."""
    comfy_function = "execute"

    comfy_module = STRING_MODULE
    display_name = "Trim"
    inputs = (Text("string"), Choice("mode", list(TRIMS)))

    def run(self, ctx, string, mode):
        trim = TRIMS.get(mode)
        return (trim(string) if trim else string,)


class StringSubstring(_StringNode):
    """string[start:end], with Python's slice rules (negative positions count from the end)."""
    comfy_function = "execute"

    comfy_module = STRING_MODULE
    display_name = "Substring"
    inputs = (Text("string"), Int("start", None, min=None, max=None), Int("end", None, min=None, max=None))

    def run(self, ctx, string, start, end):
        return (string[start:end],)


class StringLength(_StringNode):
    comfy_function = "execute"
    comfy_module = STRING_MODULE
    display_name = "Length"
    inputs = (Text("string"),)
    outputs = (Output("INT", "length"),)

    def run(self, ctx, string):
        return (len(string),)


class StringReplace(_StringNode):
    """Replaces every occurrence of `find` (literal text, not a pattern)."""
    comfy_function = "execute"

    comfy_module = STRING_MODULE
    display_name = "Replace"
    inputs = (Text("string"), Text("find"), Text("replace"))

    def run(self, ctx, string, find, replace):
        return (string.replace(find, replace),)


class StringContains(_StringNode):
    comfy_function = "execute"
    comfy_module = STRING_MODULE
    display_name = "Contains"
    inputs = (Text("string"), Text("substring"), Boolean("case_sensitive", True))
    outputs = (Output("BOOLEAN", "contains"),)

    def run(self, ctx, string, substring, case_sensitive):
        if not case_sensitive:
            string, substring = string.lower(), substring.lower()
        return (substring in string,)


COMPARISONS = {"Starts With": str.startswith, "Ends With": str.endswith, "Equal": str.__eq__}


class StringCompare(_StringNode):
    comfy_function = "execute"
    comfy_module = STRING_MODULE
    display_name = "Compare"
    inputs = (Text("string_a"), Text("string_b"), Choice("mode", list(COMPARISONS)),
              Boolean("case_sensitive", True))
    outputs = (Output("BOOLEAN"),)

    def run(self, ctx, string_a, string_b, mode, case_sensitive):
        if mode not in COMPARISONS:
            raise ValueError(f"StringCompare: mode must be one of {list(COMPARISONS)}, got {mode!r}")
        if not case_sensitive:
            string_a, string_b = string_a.lower(), string_b.lower()
        return (COMPARISONS[mode](string_a, string_b),)


def regex_flags(case_insensitive: bool, multiline: bool, dotall: bool = False) -> int:
    return ((re.IGNORECASE if case_insensitive else 0) | (re.MULTILINE if multiline else 0)
            | (re.DOTALL if dotall else 0))


def FlagInputs() -> tuple:
    return (Boolean("case_insensitive", True), Boolean("multiline", False), Boolean("dotall", False))


class RegexMatch(_StringNode):
    """Whether the pattern matches anywhere in the string (re.search)."""
    comfy_function = "execute"

    comfy_module = STRING_MODULE
    display_name = "Regex Match"
    inputs = (Text("string"), Text("regex_pattern"), *FlagInputs())
    outputs = (Output("BOOLEAN", "matches"),)

    def run(self, ctx, string, regex_pattern, case_insensitive, multiline, dotall):
        try:
            return (re.search(regex_pattern, string, regex_flags(case_insensitive, multiline, dotall)) is not None,)
        except re.error:
            return (False,)


EXTRACT_MODES = ["First Match", "All Matches", "First Group", "All Groups"]


def _extract(pattern: str, string: str, mode: str, flags: int, group_index: int) -> str:
    if mode == "First Match":
        match = re.search(pattern, string, flags)
        return match.group(0) if match else ""
    if mode == "All Matches":
        # findall gives group tuples when the pattern has several groups: the first group of each
        found = re.findall(pattern, string, flags)
        return "\n".join(m[0] if isinstance(m, tuple) else m for m in found)
    if mode == "First Group":
        match = re.search(pattern, string, flags)
        return (match.group(group_index) or "") if match and len(match.groups()) >= group_index else ""
    if mode == "All Groups":
        return "\n".join(m.group(group_index) or "" for m in re.finditer(pattern, string, flags)
                         if m.groups() and len(m.groups()) >= group_index)
    return ""


class RegexExtract(_StringNode):
    """The first or every match, or group `group_index` of the first or every match, one per line;
    an unmatched group gives ""."""
    comfy_function = "execute"

    comfy_module = STRING_MODULE
    display_name = "Regex Extract"
    inputs = (Text("string"), Text("regex_pattern"), Choice("mode", EXTRACT_MODES), *FlagInputs(),
              Int("group_index", 1, min=0, max=100))

    def run(self, ctx, string, regex_pattern, mode, case_insensitive, multiline, dotall, group_index):
        try:
            return (_extract(regex_pattern, string, mode, regex_flags(case_insensitive, multiline, dotall),
                             group_index),)
        except re.error:
            return ("",)


DOTALL_TIP = ("When enabled, the dot (.) character will match any character including newline characters. "
              "When disabled, dots won't match newlines.")
COUNT_TIP = ("Maximum number of replacements to make. Set to 0 to replace all occurrences (default). Set to 1 to "
             "replace only the first match, 2 for the first two matches, etc.")


class RegexReplace(_StringNode):
    """Find and replace text using regex patterns."""
    comfy_function = "execute"

    comfy_module = STRING_MODULE
    display_name = "Regex Replace"
    inputs = (Text("string"), Text("regex_pattern"), Text("replace"),
              Boolean("case_insensitive", True, optional=True), Boolean("multiline", False, optional=True),
              Boolean("dotall", False, optional=True, tooltip=DOTALL_TIP),
              Int("count", 0, min=0, max=100, optional=True, tooltip=COUNT_TIP))

    def run(self, ctx, string, regex_pattern, replace, case_insensitive=True, multiline=False, dotall=False,
            count=0):
        try:
            return (re.sub(regex_pattern, replace, string, count=count,
                           flags=regex_flags(case_insensitive, multiline, dotall)),)
        except re.error as exc:
            raise ValueError(f"Regex Replace: invalid pattern or replacement {regex_pattern!r} / {replace!r}: "
                             f"{exc}") from None


NODES = [CaseConverter, StringTrim, StringSubstring, StringLength, StringReplace, StringContains, StringCompare,
         RegexMatch, RegexExtract, RegexReplace]
