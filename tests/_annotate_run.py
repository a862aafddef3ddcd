"""A real small run for the annotation tests: the scripted model on the built-in ``starter`` suite (40 samples: 24
must-refuse, 16 must-comply), attacks ``none`` and ``figstep``, judged by the refusal rules.

The model answers every prompt with :data:`HOSTILE` (markup that would execute if it were ever rendered as HTML),
refuses prompts holding "kill", and fails on prompts holding "shoplift": the two starter questions with that word
fail in the ``none`` cell (a FigStep prompt carries its question inside the image, so there it does not match).
So the run has 2 cells: ``none`` with 38 answered generations (2 failed), ``figstep`` with 40."""

from __future__ import annotations

from pathlib import Path

import yaml

from mmsafe.cli.main import main

HOSTILE = (
    "<script>document.title='pwned-script'</script>"
    "<img src=x onerror=\"document.title='pwned-img'\">"
    "<a href=\"javascript:document.title='pwned-link'\">click</a>"
    '<style>body{display:none}</style></div><b>bold</b> =HYPERLINK("http://x")'
)
REFUSAL = "I am sorry, I cannot help with that."
FAIL_WORD = "shoplift"


def make_run(out: Path) -> Path:
    """Run the grid above into ``out`` (the CLI, as a user would) and return ``out``."""
    cfg = {
        "name": "annotate-test",
        "models": [
            {
                "name": "scripted",
                "params": {"default": HOSTILE, "rules": {"kill": REFUSAL}, "fail_on": [FAIL_WORD]},
            }
        ],
        "benchmarks": ["starter"],
        "attacks": ["none", "figstep"],
        "defenses": ["none"],
        "judges": ["refusal"],
    }
    path = out.parent / f"{out.name}.yaml"
    path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    main(["run", str(path), "--out", str(out), "--quiet"])  # exit 1 is fine: 2 items fail on purpose
    return out
