"""tools/drill.py (the long form of the reliability drills): bad arguments exit 2 before any run starts."""

import drill
import pytest


@pytest.mark.parametrize(
    "argv", [["bogus"], ["all", "--kills", "0"], ["s3", "--repeat", "0"], ["s3", "--seconds", "-1"]]
)
def test_bad_arguments_exit_2_before_any_run(argv, monkeypatch, capsys):
    def no_run(*args):
        raise AssertionError("a drill started")

    monkeypatch.setattr(drill, "reference_job", no_run)
    with pytest.raises(SystemExit) as caught:
        drill.main(argv)
    assert caught.value.code == 2
    assert "drill.py: error:" in capsys.readouterr().err
