"""Help formatting shared by every ``tempo-jax`` command's parser."""

from __future__ import annotations

import argparse


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the examples epilog as written and appends ``(default: X)`` to every option whose
    default is a value (not None or an off switch)."""

    def _get_help_string(self, action):
        text = action.help or ""
        if ("%(default)" in text or not action.option_strings or action.default is None
                or action.default is False or action.default is argparse.SUPPRESS):
            return text
        return f"{text} (default: %(default)s)"
