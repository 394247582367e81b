from typer.testing import CliRunner

from kdpipe.cli import app
from kdpipe.clip.text_bench import N_CTX, bench_text_trim


def test_text_bench_compares_the_same_prompts_trimmed_and_full(tiny_student):
    names = ["red circle", "dark green rounded square"]
    res = bench_text_trim(tiny_student, names, repeats=1)
    tokens = tiny_student.tokenizer([" ".join(["X"] * N_CTX) + f" {c}." for c in names])
    assert res["prompts"] == len(names) and res["context_length"] == tokens.shape[1]
    # padding is token 0, so the longest prompt's EOT is its last non-zero position
    assert res["trimmed_length"] == int((tokens != 0).sum(dim=1).max()) < res["context_length"]
    assert res["max_abs_diff"] < 1e-4  # same features, only fewer positions
    assert all(res[name]["full_ms"] > 0 and res[name]["trimmed_ms"] > 0 for name in ("forward", "train_step"))


def test_text_bench_speedup_is_full_over_trimmed_for_each_pass(tiny_student, monkeypatch):
    """Known timings in, known ratios out: full before trimmed, forward before the train step."""
    import kdpipe.clip.text_bench as text_bench

    timings = iter([40.0, 10.0, 90.0, 30.0])  # forward full, trimmed; train step full, trimmed
    monkeypatch.setattr(text_bench, "per_call_ms", lambda fn, device, repeats: (fn(), next(timings))[1])
    res = bench_text_trim(tiny_student, ["red circle"], repeats=1)
    assert res["forward"] == {"full_ms": 40.0, "trimmed_ms": 10.0, "speedup": 4.0}
    assert res["train_step"] == {"full_ms": 90.0, "trimmed_ms": 30.0, "speedup": 3.0}


def test_text_bench_command_reads_class_names_and_refuses_an_empty_file(tmp_path):
    names = tmp_path / "names.txt"
    names.write_text("red circle\nblue star\n")
    out = tmp_path / "res.json"
    result = CliRunner().invoke(app, ["bench", "text", "--backbone", "kd-tiny-s", "--classnames", str(names), "--repeats", "1", "--json", str(out)])
    assert result.exit_code == 0, result.output
    assert '"prompts": 2' in out.read_text()
    names.write_text("\n")
    result = CliRunner().invoke(app, ["bench", "text", "--backbone", "kd-tiny-s", "--classnames", str(names)])
    assert result.exit_code != 0 and "no class names" in str(result.exception)
