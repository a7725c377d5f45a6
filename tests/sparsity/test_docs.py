"""docs/sparsity.md: every ``palix sparsity advise|table`` command prints exactly the output the
page records after it."""

import pathlib
import re
import shlex

import pytest

from palix.cli import main as cli_main

DOC = pathlib.Path(__file__).resolve().parents[2] / "docs" / "sparsity.md"
PAIRS = re.findall(r"```bash\n(palix sparsity (?:advise|table)[^\n]*)\n```\n\n```text\n(.*?)```",
                   DOC.read_text(), flags=re.S)


def test_the_page_records_advisor_outputs():
  assert len(PAIRS) >= 3


@pytest.mark.parametrize("command, expected", PAIRS)
def test_recorded_output_is_current(command, expected, capsys):
  assert cli_main.main(shlex.split(command)[1:]) == 0
  assert capsys.readouterr().out == expected
