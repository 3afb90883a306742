"""The `emulate` subcommand: flags, help text, engine construction, start-up errors."""

from __future__ import annotations

import argparse

import pytest

from litellm_dualpool.cli import main
from litellm_dualpool.emulator.command import build_engine, configure


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    configure(parser)
    return parser.parse_args(list(argv))


def test_help_documents_every_fault_knob(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["emulate", "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    for knob in ("error_rate", "latency_seconds", "hang_rate", "drop_rate", "refuse", "refuse_seconds",
                 "stall", "no_usage", "error_format", "/admin/faults", "--instant", "--speedup"):
        assert knob in out


def test_auto_tensor_parallel_is_the_smallest_that_fits() -> None:
    engine = build_engine(_args("--model", "llama-3-70b", "--gpu", "a100", "--max-model-len", "8192"))
    assert engine.config.tensor_parallel_size == 2  # 70B BF16 does not fit one 80 GB GPU
    engine = build_engine(_args("--model", "llama-3.1-8b", "--gpu", "h100"))
    assert engine.config.tensor_parallel_size == 1
    assert build_engine(_args("-tp", "8")).config.tensor_parallel_size == 8


@pytest.mark.parametrize(
    "argv",
    [["--output-len-dist", "bogus"], ["--speedup", "0"], ["--error-rate", "2"], ["--gpu", "tpu"],
     ["--model", "llama-3-70b", "-tp", "1"]],
)
def test_bad_flags_exit_2_with_a_message(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["emulate", *argv]) == 2
    assert capsys.readouterr().err.startswith("litellm-dualpool emulate: ")
