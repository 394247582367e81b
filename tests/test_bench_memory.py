"""``kdpipe bench memory`` runs distill and classify in fresh processes per size and reports their
peaks and the ratios of the peaks it measured (the figures themselves are not asserted)."""

import json


def test_bench_memory_measures_each_workload_at_each_size(tmp_path):
    from typer.testing import CliRunner

    from kdpipe.cli import app

    out = tmp_path / "memory.json"
    result = CliRunner().invoke(app, ["bench", "memory", "--images", "20,40", "--workers", "1", "--json", str(out)])
    assert result.exit_code == 0, f"{result.output}\n{result.exception!r}"
    res = json.loads(out.read_text())
    assert res["sizes"] == [20, 40] and set(res["runs"]) == {"distill", "classify"}
    for kind, rows in res["runs"].items():
        assert [r["images"] for r in rows] == [20, 40]
        assert all(r["main_mib"] > 0 and r["worker_mib"] > 0 for r in rows)  # one decoding worker ran and was counted
        assert res["ratios"][kind] == {k: rows[1][k] / rows[0][k] for k in ("main_mib", "worker_mib")}
    assert "distill: peak at 40 / peak at 20 images" in result.output


def test_bench_memory_refuses_a_single_size():
    from typer.testing import CliRunner

    from kdpipe.cli import app

    result = CliRunner().invoke(app, ["bench", "memory", "--images", "400"])
    assert result.exit_code != 0 and "at least two sizes" in str(result.exception)
