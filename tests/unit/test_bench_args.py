"""`python -m bench`'s options: the submit benchmark's choices are checked up front."""

from __future__ import annotations

import pytest

from bench.__main__ import BENCHMARKS, parse_args
from orchestrator.domain.batches import MAX_ITEMS


def test_submit_is_a_benchmark_with_its_own_options() -> None:
    args = parse_args(["--only", "submit"])
    assert "submit" in BENCHMARKS
    assert (args.only, args.items, args.rounds) == (["submit"], 1000, 3)
    assert parse_args(["--only", "submit", "--items", str(MAX_ITEMS)]).items == MAX_ITEMS


@pytest.mark.parametrize(
    "argv", [["--items", "0"], ["--items", str(MAX_ITEMS + 1)], ["--rounds", "0"]]
)
def test_a_submission_a_batch_could_not_take_is_refused(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit):
        parse_args(argv)
    assert "must be" in capsys.readouterr().err
