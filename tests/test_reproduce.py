"""Every command in docs/REPRODUCE.md names flags that exist and values that parse (the commands' own parsers)."""

import json
import os
import re
import shlex
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REPRODUCE = os.path.join(ROOT, "docs", "REPRODUCE.md")

# Defines a command's flags as the command does, then parses each argument list with absl, one after another.
PARSE = """
import json, sys
from absl import flags
from keras_wsol.cli import flags as wsol_flags, parsing
script, commands = sys.argv[1], json.loads(sys.argv[2])
wsol_flags.define_train_flags() if script == "train.py" else wsol_flags.define_evaluate_flags()
for args in commands:
    try:
        parsing.parse_flags([script, *args])
    except Exception as error:
        print("FAILED", args, error)
    flags.FLAGS.unparse_flags()
print("PARSED", len(commands))
"""


def commands() -> dict[str, list[list[str]]]:
    """The arguments of each ``python train.py|evaluate.py ...`` line of the code blocks, $CUB and $TINY expanded."""
    text = open(REPRODUCE, encoding="utf-8").read()
    variables = {
        f"${name}": shlex.split(value.replace("$DATA", "/data"))
        for name, value in re.findall(r'^(CUB|TINY)="([^"]*)"', text, re.M)
    }
    found = {"train.py": [], "evaluate.py": []}
    for block in re.findall(r"```\n(.*?)```", text, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line.split("#")[0])
            if words[:1] == ["python"] and words[1] in found:
                found[words[1]].append([a for w in words[2:] for a in variables.get(w, [w])])
    return found


def test_every_reproduce_command_parses():
    for script, arguments in commands().items():
        result = subprocess.run(
            [sys.executable, "-c", PARSE, script, json.dumps(arguments)],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert result.returncode == 0, result.stderr[-2000:]
        assert "FAILED" not in result.stdout, result.stdout
        assert f"PARSED {len(arguments)}" in result.stdout


def test_the_recipes_are_the_official_regimes():
    found = commands()
    text = " ".join(" ".join(args) for args in found["train.py"])
    assert "--minmaxcam_official_optimizer" in text and "--minmaxcam_stage2_regime=shared_zero_grads" in text
    assert "cub_ornet1_vgg16/checkpoints/last.keras" in text and "cub_ornet1_vgg16/checkpoints/best" not in text
    assert len(found["train.py"]) >= 10 and len(found["evaluate.py"]) >= 2
