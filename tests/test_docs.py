"""The documentation the code generates is current; the package's commands work installed."""

import os
import re
import subprocess
import sys

import keras_wsol
from keras_wsol.methods import METHODS, registry
from keras_wsol.methods.hyperparameters import flag_name

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(ROOT, "README.md")


def test_readme_flag_tables_are_generated_from_the_declarations():
    text = open(README, encoding="utf-8").read()
    block = f"{registry.README_BEGIN}\n{registry.flag_tables()}\n{registry.README_END}"
    assert block in text, (
        "README's hyper-parameter tables are stale: run python -m keras_wsol.methods.registry README.md"
    )
    for name in registry.BUILT_IN:
        for parameter in METHODS[name].hyperparameters:
            flag = flag_name(name, parameter)
            assert flag is None or f"`--{flag}`" in text, flag
            assert parameter.source, f"{name}.{parameter.name} names no source for its default"


def test_the_changelog_lists_every_renamed_flag_and_the_version():
    text = open(os.path.join(ROOT, "CHANGELOG.md"), encoding="utf-8").read()
    assert f"## {keras_wsol.__version__}" in text
    for name, cls in METHODS.items():
        for parameter in cls.hyperparameters:
            for old, version in parameter.renamed_from:
                section = text.split(f"## {version}")[1].split("\n## ")[0]  # that version's entry
                assert f"| `--{old}` | `--" in section, (old, version)
                if version == keras_wsol.__version__:
                    assert f"| `--{old}` | `--{flag_name(name, parameter)}` |" in section, old


def test_every_method_docstring_lists_its_hyperparameters():
    for cls in METHODS.values():
        for parameter in cls.hyperparameters:
            assert f"{parameter.name} = {parameter.default!r}" in cls.__doc__, (cls.__name__, parameter.name)


def test_the_package_exposes_its_version_and_commands_and_the_console_scripts_run():
    assert keras_wsol.__version__ and callable(keras_wsol.train) and callable(keras_wsol.evaluate)
    bindir = os.path.dirname(sys.executable)
    for script in ("wsol-train", "wsol-evaluate"):
        # absl's --helpfull lists every flag, then exits with status 1.
        result = subprocess.run(
            [os.path.join(bindir, script), "--helpfull"], capture_output=True, text=True, timeout=300, cwd="/"
        )
        assert "--workdir" in result.stdout, result.stderr[-2000:]
    result = subprocess.run(
        [sys.executable, "-m", "keras_wsol.cli.train", "--helpfull"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd="/",
    )
    assert "--minmaxcam_lambda_frr" in result.stdout and "--ornet_refine_alpha" in result.stdout


def test_the_code_is_formatted_and_lint_free():
    """ruff, configured in pyproject.toml: the formatter's style and the linter's rules hold for the whole tree."""
    for args in (["check", "."], ["format", "--check", "."]):
        result = subprocess.run(
            [sys.executable, "-m", "ruff", *args], cwd=ROOT, capture_output=True, text=True, timeout=300
        )
        assert result.returncode == 0, f"ruff {' '.join(args)}:\n{result.stdout[-3000:]}{result.stderr[-1000:]}"


def test_the_readme_python_examples_run_in_a_fresh_process(tmp_path):
    text = open(README, encoding="utf-8").read()
    start = text.index("Every method is a `WSOLModel`")
    blocks = re.findall(r"```python\n(.*?)```", text[start : text.index("## Backbones", start)], re.S)
    # the method example (with save and load), the localizers', then one-call localization of photos of any size
    assert len(blocks) == 3 and len(blocks[2].strip().splitlines()) <= 15
    result = subprocess.run(
        [sys.executable, "-c", "\n".join(blocks)], cwd=tmp_path, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert os.path.isfile(tmp_path / "cam.keras")
    found = result.stdout.strip().splitlines()[-2:]  # one line per photo, each with its own map size
    assert "(120, 160)" in found[0] and "(64, 64)" in found[1]
