"""Rule 5: a metrics.jsonl cut mid-line, padded with NUL bytes (what a crash leaves where data
was lost) or holding lines that are not records (a JSON list, a number) does not stop a resume:
the good lines up to the step resumed from are kept, the rest dropped with one warning. `dint
report` reads it with the same reader (dint.train.metrics.read_metrics_lines)."""

from __future__ import annotations

import json

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dint.commands.report import read_run
from dint.core.config import MetricsConfig
from dint.train.metrics import MetricsLogger, Timers, read_metrics_lines

records = st.integers(1, 400).map(lambda step: {"step": step, "loss": 0.5, "psnr": None, "train_seconds": 1.0 * step})
damage = st.one_of(
    st.builds(lambda record, cut: json.dumps(record)[:cut], records, st.integers(1, 20)),  # cut short
    st.integers(1, 64).map(lambda n: "\0" * n),  # NUL bytes in place of lost data
    st.sampled_from(
        [
            "[1, 2]",
            "[]",
            "3",
            '"step"',
            "null",
            "true",
            '{"loss": 1}',
            '{"step": "7"}',
            '{"step": 0}',
            '{"step": true}',
            "{",
            "\x00{\x00",
            "\ufffd\ufffd",
        ]
    ),
    st.lists(st.integers(), max_size=3).map(json.dumps),
)
rows = st.lists(st.one_of(records.map(lambda r: ("good", r)), damage.map(lambda d: ("bad", d))), max_size=12)
padding = st.sampled_from(["", "\0", "\0\0\0\0", " "])


def text_of(drawn, pad_before: str, pad_after: str) -> str:
    return "".join(
        (pad_before + json.dumps(item) + pad_after if kind == "good" else item) + "\n" for kind, item in drawn
    )


@settings(max_examples=50, deadline=None)
@given(drawn=rows, pad_before=padding, pad_after=padding)
def test_the_reader_keeps_exactly_the_records(drawn, pad_before, pad_after):
    lines, damaged = read_metrics_lines(text_of(drawn, pad_before, pad_after))
    assert lines == [item for kind, item in drawn if kind == "good"]
    assert damaged == [number for number, (kind, _) in enumerate(drawn, 1) if kind == "bad"]


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(drawn=rows, up_to=st.integers(1, 400), tail=st.one_of(st.just(""), damage))
def test_a_resume_keeps_the_good_lines_up_to_its_step(tmp_path, capsys, drawn, up_to, tail):
    path = tmp_path / "metrics.jsonl"
    path.write_text(text_of(drawn, "", "") + tail)  # `tail`: a last line without its end, or none
    capsys.readouterr()
    logger = MetricsLogger(MetricsConfig(), 500, tmp_path, True, Timers(torch.device("cpu")), resume_after=up_to)
    logger.close()
    kept = [json.loads(line) for line in path.read_text().splitlines()]
    assert kept == [item for kind, item in drawn if kind == "good" and item["step"] <= up_to]
    warnings = capsys.readouterr().err.splitlines()
    damaged = any(kind == "bad" for kind, _ in drawn) or tail
    assert len(warnings) == (1 if damaged else 0), warnings
    if damaged:
        assert f"{path}: dropped" in warnings[0] and "damaged line(s)" in warnings[0]


def test_report_reads_past_damaged_lines_and_the_line_being_written(tmp_path, capsys):
    (tmp_path / "config.toml").write_text('[teacher]\nstrategy = "int"\n[train]\nsteps = 30\n')
    good = [{"step": s, "loss": 1.0, "psnr": 20.0 + s, "train_seconds": float(s)} for s in (10, 20)]
    text = json.dumps(good[0]) + "\n" + "\0" * 40 + "\n[1, 2]\n" + json.dumps(good[1]) + "\n" + '{"step": 30, "lo'
    (tmp_path / "metrics.jsonl").write_text(text)
    run = read_run(tmp_path)
    assert run.step == 20 and run.curve == [(10.0, 30.0), (20.0, 40.0)]
    warnings = capsys.readouterr().err.splitlines()
    assert len(warnings) == 1 and "skipped 2 damaged line(s) (2, 3)" in warnings[0], warnings  # not the last one
