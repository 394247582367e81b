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
        assert set(res["ratios"][kind]) == {"main_mib", "worker_mib"}
    assert "distill: peak at 40 / peak at 20 images" in result.output


def test_memory_ratios_are_the_largest_size_over_the_smallest():
    from kdpipe.bench_memory import MemoryBench, summary_lines

    row = lambda n, main, worker: {"images": n, "main_mib": main, "worker_mib": worker, "seconds": 1.0}  # noqa: E731
    res = MemoryBench(sizes=[400, 2000, 4000], workers=1, batch=32, cache_views=0, machine="test",
                      runs={"distill": [row(400, 800.0, 500.0), row(2000, 810.0, 505.0), row(4000, 840.0, 550.0)],
                            "classify": [row(400, 700.0, 0.0), row(2000, 700.0, 0.0), row(4000, 700.0, 0.0)]})
    assert res.ratios == {"distill": {"main_mib": 1.05, "worker_mib": 1.1},
                          "classify": {"main_mib": 1.0, "worker_mib": None}}  # no worker measured: no ratio
    lines = summary_lines(res)
    assert "distill: peak at 4000 / peak at 400 images: main 1.050x, worker 1.100x (goal <= 1.05)" in lines
    assert "classify: peak at 4000 / peak at 400 images: main 1.000x, worker n/a (goal <= 1.05)" in lines


def test_bench_memory_refuses_a_single_size():
    from typer.testing import CliRunner

    from kdpipe.cli import app

    result = CliRunner().invoke(app, ["bench", "memory", "--images", "400"])
    assert result.exit_code != 0 and "at least two sizes" in str(result.exception)
