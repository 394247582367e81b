"""The stage runner on a toy graph: skipping, staleness, force, resume after SIGKILL, locking,
families and seeds, status. The toy stages live in a source string so that subprocesses (the kill
and lock tests) can load exactly the same graph from a file."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from kdpipe.config import resolve_config
from kdpipe.pipeline import (
    Plan,
    RunLock,
    StageGraph,
    format_status,
    run_stages,
    stage_statuses,
)
from kdpipe.errors import KdpipeError
from kdpipe.pipeline.manifest import MANIFEST

TOY_SOURCE = textwrap.dedent(
    '''
    """Toy stages: prep -> train (slow, checkpointed) -> report; plus a family and seeded stages."""
    import json
    import os
    import time
    from dataclasses import dataclass, field

    from kdpipe.config import runtime_setting
    from kdpipe.io import write_json as write_json_atomic
    from kdpipe.errors import KdpipeError


    @dataclass
    class Member:
        w: int = 1


    def seen(ctx):
        # which rank ran which stage (the torchrun test reads this)
        if os.environ.get("TOY_SEEN"):
            with open(os.environ["TOY_SEEN"], "a") as f:
                f.write(f"{ctx.name} {ctx.rank}/{ctx.world_size}\\n")


    def barrier(ctx, group, members):
        # TOY_BARRIER=dir: every member waits until all have started (proves they ran side by side)
        where = os.environ.get("TOY_BARRIER")
        if not where:
            return
        open(os.path.join(where, ctx.name), "w").close()
        deadline = time.time() + 60
        while not all(os.path.exists(os.path.join(where, f"{group}:{m}")) for m in members):
            if time.time() > deadline:
                raise KdpipeError(f"{ctx.name} ran alone")
            time.sleep(0.05)


    def build(graph):
        schema = graph.schema

        @schema.section("toy", members=lambda m: Member if m.startswith("m") else None)
        @dataclass
        class Toy:
            a: int = 1
            b: float = 0.5
            steps: int = 12
            unused: str = "nobody reads me"
            methods: list = field(default_factory=lambda: ["m1", "m2"])
            fail: bool = False
            workers: int = runtime_setting(2)

        @schema.section("run")
        @dataclass
        class Run:
            seed: int = 1
            seeds: list[int] = field(default_factory=list)

        @graph.stage("prep", reads=["toy.a"], outputs=["prep.json"])
        def prep(ctx):
            seen(ctx)
            if ctx.rank == 0:  # under torchrun only rank 0 writes outputs
                write_json_atomic(ctx.dir / "prep.json", {"a": ctx.cfg["toy"].a})
            return {"a": ctx.cfg["toy"].a}

        @graph.stage("train", reads=["toy.b", "toy.steps", "toy.fail"], deps=["prep"], outputs=["train.json"], headline="acc")
        def train(ctx):
            seen(ctx)
            if ctx.cfg["toy"].fail:
                raise KdpipeError("toy.fail is set; unset it to train")
            a = json.loads((ctx.inputs["prep"] / "prep.json").read_text())["a"]
            state_file = ctx.ckpt_dir / "state.json"
            state = json.loads(state_file.read_text()) if state_file.exists() else {"step": 0, "acc": a}
            resumed_from = state["step"]
            sleep = float(os.environ.get("TOY_SLEEP", "0"))
            steps = ctx.cfg["toy"].steps
            with ctx.progress(steps, "train", initial=state["step"]) as bar:
                while state["step"] < steps:
                    state["step"] += 1
                    state["acc"] = (state["acc"] * 31 + state["step"] + int(1000 * ctx.cfg["toy"].b)) % 1000003
                    if ctx.rank == 0:
                        write_json_atomic(state_file, state)
                    bar.update(1, images=4, loss=1.0 / state["step"])
                    time.sleep(sleep)
            if ctx.rank == 0:
                write_json_atomic(ctx.dir / "train.json", {"acc": state["acc"]})
            ctx.log.info("trained")
            return {"acc": state["acc"] / 1000003, "resumed_from": resumed_from}

        @graph.stage("report", deps=["train"], outputs=["report.txt"])
        def report(ctx):
            seen(ctx)
            acc = json.loads((ctx.inputs["train"] / "train.json").read_text())["acc"]
            if ctx.rank == 0:
                (ctx.dir / "report.txt").write_text(f"acc {acc}\\n")
            return {}

        return graph


    def build_expanded(graph):
        build(graph)

        @graph.stage("fam", reads=["toy.{member}", "toy.a"], deps=["prep"], expand=lambda cfg: cfg["toy"].methods,
                     outputs=["out.json"])
        def fam(ctx):
            barrier(ctx, "fam", ctx.cfg["toy"].methods)
            write_json_atomic(ctx.dir / "out.json", {"member": ctx.member, "overrides": ctx.param("toy." + ctx.member)})
            return {"w": ctx.cfg.value("toy." + ctx.member + ".w")}

        @graph.stage("sd", reads=["toy.b"], deps=["prep"], seeded=True, outputs=["seed.json"])
        def sd(ctx):
            write_json_atomic(ctx.dir / "seed.json", {"seed": ctx.seed, "cfg_seed": ctx.cfg["run"].seed})
            return {"seed": ctx.seed}

        @graph.stage("sd2", deps=["sd"], seeded=True, outputs=["seed.json"])
        def sd2(ctx):
            own = json.loads((ctx.inputs["sd"] / "seed.json").read_text())
            write_json_atomic(ctx.dir / "seed.json", own)
            return {}

        @graph.stage("agg", deps=["fam", "sd"], outputs=["agg.json"])
        def agg(ctx):
            write_json_atomic(ctx.dir / "agg.json", {
                "fam": sorted(ctx.inputs_of("fam")),
                "seeds": sorted(json.loads((p / "seed.json").read_text())["seed"] for p in ctx.inputs_of("sd").values()),
            })
            return {"n": len(ctx.upstream)}

        return graph
    '''
)

RUN_SCRIPT = textwrap.dedent(
    """
    import sys
    from kdpipe.config import resolve_config
    from kdpipe.pipeline import StageGraph, run_stages
    sys.path.insert(0, sys.argv[2])
    import toy_stages
    graph = toy_stages.build(StageGraph())
    cfg = resolve_config(None, schema=graph.schema)
    run_stages(cfg, sys.argv[1], graph=graph, echo=lambda m: print(m, flush=True))
    """
)

LOCK_SCRIPT = textwrap.dedent(
    """
    import sys
    from kdpipe.pipeline import RunLock
    with RunLock(sys.argv[1]):
        print("locked", flush=True)
        sys.stdin.readline()
    """
)


@pytest.fixture
def toy(tmp_path):
    src = tmp_path / "toy_src"
    src.mkdir()
    (src / "toy_stages.py").write_text(TOY_SOURCE)
    spec = importlib.util.spec_from_file_location(f"toy_stages_{id(src)}", src / "toy_stages.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.src_dir = src
    return module


def cfg_of(graph, *sets):
    return resolve_config(None, [(k, v, "--set") for k, v in (s.split("=", 1) for s in sets)], schema=graph.schema)


def run(graph, run_dir, *sets, **kw):
    return run_stages(cfg_of(graph, *sets), run_dir, graph=graph, echo=lambda m: None, **kw)


def states(graph, run_dir, *sets):
    return {s.name: s for s in stage_statuses(cfg_of(graph, *sets), run_dir, graph=graph)}


def test_second_run_skips_everything(toy, tmp_path):
    graph = toy.build(StageGraph())
    rd = tmp_path / "run"
    first = run(graph, rd)
    assert first.ran == ["prep", "train", "report"]
    manifest = json.loads((rd / "train" / MANIFEST).read_text())
    assert manifest["config"] == {"toy.b": 0.5, "toy.steps": 12, "toy.fail": False}
    assert set(manifest["outputs"]) == {"train.json"}  # not the checkpoint, log or bookkeeping
    assert manifest["upstream"]["prep"]["fingerprint"] == json.loads((rd / "prep" / MANIFEST).read_text())["fingerprint"]
    assert {"kdpipe", "torch", "open_clip"} <= set(manifest["versions"]) and manifest["wall_time_s"] >= 0
    assert (rd / "train" / "log.txt").read_text().count("trained") == 1
    second = run(graph, rd)
    assert second.ran == [] and second.skipped == ["prep", "train", "report"]
    assert {s.state for s in states(graph, rd).values()} == {"done"}


def test_changing_a_read_param_reruns_that_stage_and_downstream(toy, tmp_path):
    graph = toy.build(StageGraph())
    rd = tmp_path / "run"
    run(graph, rd)
    st = states(graph, rd, "toy.b=0.7")
    assert st["prep"].state == "done"
    assert (st["train"].state, st["train"].reason) == ("stale", "toy.b 0.5 -> 0.7")
    assert st["report"].state == "stale" and "upstream train changed" in st["report"].reason
    assert run(graph, rd, "toy.b=0.7").ran == ["train", "report"]
    # going back is a change too
    assert run(graph, rd).ran == ["train", "report"]


def test_changing_an_unread_param_reruns_nothing(toy, tmp_path):
    graph = toy.build(StageGraph())
    rd = tmp_path / "run"
    run(graph, rd)
    assert run(graph, rd, "toy.unused=changed").ran == []


def test_force_reruns_targets(toy, tmp_path):
    graph = toy.build(StageGraph())
    rd = tmp_path / "run"
    run(graph, rd)
    assert run(graph, rd, force=True).ran == ["prep", "train", "report"]
    # forcing one stage redoes it from scratch (no resume) but not what it needs; identical outputs
    # keep the downstream stage done
    report = run(graph, rd, target="train", force=True)
    assert report.ran == ["train"] and report.metrics["train"]["resumed_from"] == 0
    assert states(graph, rd)["report"].state == "done"


def test_needs_with_deps_when_upstream_is_not_done(toy, tmp_path):
    graph = toy.build(StageGraph())
    rd = tmp_path / "run"
    with pytest.raises(KdpipeError, match=r"stage report needs train, which is missing; run `kdpipe run report --with-deps`"):
        run(graph, rd, target="report")
    assert run(graph, rd, target="train", with_deps=True).ran == ["prep", "train"]
    assert run(graph, rd, target="report").ran == ["report"]
    with pytest.raises(KdpipeError, match="unknown stage 'trian'; did you mean 'train'"):
        run(graph, rd, target="trian")


def test_tampered_output_and_corrupt_manifest_count_as_not_done(toy, tmp_path):
    graph = toy.build(StageGraph())
    rd = tmp_path / "run"
    run(graph, rd)
    (rd / "train" / "train.json").write_text('{"acc": -1}')
    st = states(graph, rd)["train"]
    assert (st.state, st.reason) == ("stale", "output train.json was modified")
    # re-running restores identical outputs, so report (which saw the same outputs) stays done
    assert run(graph, rd).ran == ["train"]

    for garbage in ("{not json", '{"format": "kdpipe-stage-manifest"', ""):
        (rd / "prep" / MANIFEST).write_text(garbage)
        st = states(graph, rd)["prep"]
        assert st.state == "stale" and "manifest unreadable" in st.reason
        assert run(graph, rd).ran == ["prep"]


def test_incompatible_manifest_version_is_one_clear_error(toy, tmp_path):
    graph = toy.build(StageGraph())
    rd = tmp_path / "run"
    run(graph, rd)
    manifest = json.loads((rd / "train" / MANIFEST).read_text())
    manifest["format_version"] = 99
    (rd / "train" / MANIFEST).write_text(json.dumps(manifest))
    for call in (lambda: states(graph, rd), lambda: run(graph, rd)):
        with pytest.raises(KdpipeError, match=r"format 99\); this kdpipe reads format 1: use a new --run-dir") as e:
            call()
        assert "\n" not in str(e.value)


def test_failed_stage_is_reported_and_cleared_on_success(toy, tmp_path):
    graph = toy.build(StageGraph())
    rd = tmp_path / "run"
    with pytest.raises(KdpipeError, match="toy.fail is set"):
        run(graph, rd, "toy.fail=true")
    st = states(graph, rd, "toy.fail=true")
    assert (st["prep"].state, st["train"].state) == ("done", "failed")
    assert st["train"].reason == "toy.fail is set; unset it to train"
    assert not (rd / "train" / MANIFEST).exists()
    assert "failed: toy.fail is set" in (rd / "train" / "log.txt").read_text()
    text = format_status(list(st.values()))
    assert "train   failed" in text and "toy.fail is set" in text
    assert run(graph, rd).ran == ["train", "report"]
    assert not (rd / "train" / "failed.json").exists()


def test_status_table_shows_state_reason_time_and_metric(toy, tmp_path):
    graph = toy.build(StageGraph())
    rd = tmp_path / "run"
    assert {s.state for s in states(graph, rd).values()} == {"missing"}
    run(graph, rd)
    text = format_status(stage_statuses(cfg_of(graph, "toy.b=0.25"), rd, graph=graph))
    lines = text.splitlines()
    assert lines[0].split() == ["stage", "state", "time", "metric", "why"]
    assert lines[1].split()[:2] == ["prep", "done"]
    train = lines[2]
    assert train.split()[:2] == ["train", "stale"] and "acc=" in train and train.endswith("toy.b 0.5 -> 0.25")


def test_killed_stage_resumes_to_the_same_outputs(toy, tmp_path):
    graph = toy.build(StageGraph())
    script = tmp_path / "run_toy.py"
    script.write_text(RUN_SCRIPT)
    reference = tmp_path / "reference"
    run(graph, reference)

    rd = tmp_path / "killed"
    env = dict(os.environ, TOY_SLEEP="0.3", PYTHONPATH=str(Path.cwd()))
    proc = subprocess.Popen([sys.executable, str(script), str(rd), str(toy.src_dir)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    state_file = rd / "train" / "ckpt" / "state.json"
    deadline = time.monotonic() + 120  # generous: the machine is shared; this is not a timing assertion
    while time.monotonic() < deadline and proc.poll() is None:
        state = json.loads(state_file.read_text()) if state_file.exists() else {"step": 0}
        if state["step"] >= 3:
            break
        time.sleep(0.05)
    assert proc.poll() is None, proc.stdout.read().decode()
    proc.send_signal(signal.SIGKILL)
    proc.wait()

    st = states(graph, rd)
    assert st["prep"].state == "done"
    assert (st["train"].state, st["train"].reason) == ("missing", "interrupted; will resume from its checkpoint")
    assert not (rd / "train" / MANIFEST).exists()

    again = run(graph, rd)  # the dead process's lock does not block
    assert again.ran == ["train", "report"]
    assert 3 <= again.metrics["train"]["resumed_from"] < 12
    for rel in ("prep/prep.json", "train/train.json", "report/report.txt"):
        assert (rd / rel).read_bytes() == (reference / rel).read_bytes()


def test_checkpoint_is_dropped_when_settings_change(toy, tmp_path):
    graph = toy.build(StageGraph())
    rd = tmp_path / "run"
    run(graph, rd, target="prep")
    ckpt = rd / "train" / "ckpt"
    ckpt.mkdir(parents=True)
    (rd / "train" / ".attempt.json").write_text(json.dumps({"fingerprint": "an older one"}))
    (ckpt / "state.json").write_text(json.dumps({"step": 5, "acc": 3}))
    assert states(graph, rd)["train"].reason == "interrupted; settings or inputs changed since, will restart"
    assert run(graph, rd, target="train").metrics["train"]["resumed_from"] == 0


def test_second_concurrent_run_is_refused(toy, tmp_path):
    graph = toy.build(StageGraph())
    rd = tmp_path / "run"
    script = tmp_path / "lock.py"
    script.write_text(LOCK_SCRIPT)
    holder = subprocess.Popen([sys.executable, str(script), str(rd)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              env=dict(os.environ, PYTHONPATH=str(Path.cwd())))
    try:
        assert holder.stdout.readline().strip() == b"locked"
        assert RunLock.holder(rd) == holder.pid
        with pytest.raises(KdpipeError, match=rf"run dir .* is in use by another kdpipe run \(pid {holder.pid}\); wait") as e:
            run(graph, rd)
        assert "\n" not in str(e.value)
        # status reads a busy run dir; the stage the holder is working on shows as running
        (rd / "train").mkdir()
        (rd / "train" / ".attempt.json").write_text(json.dumps({"fingerprint": "x", "pid": holder.pid}))
        st = states(graph, rd)
        assert (st["train"].state, st["train"].reason) == ("running", f"pid {holder.pid}")
        assert st["prep"].state == "missing"
    finally:
        holder.kill()
        holder.wait()
    assert (rd / ".kdpipe.lock").exists()  # left behind by the killed holder ...
    assert run(graph, rd).ran == ["prep", "train", "report"]  # ... and harmless


def test_families_and_seeds_expand_into_instances(toy, tmp_path):
    graph = toy.build_expanded(StageGraph())
    rd = tmp_path / "run"
    first = run(graph, rd, "run.seeds=1,2")
    assert first.ran == ["prep", "train", "report", "fam:m1", "fam:m2", "sd@seed1", "sd@seed2",
                         "sd2@seed1", "sd2@seed2", "agg"]
    assert json.loads((rd / "sd-seed2" / "seed.json").read_text()) == {"seed": 2, "cfg_seed": 2}
    assert json.loads((rd / "sd2-seed1" / "seed.json").read_text())["seed"] == 1  # same-seed upstream
    assert json.loads((rd / "agg" / "agg.json").read_text()) == {"fam": ["fam:m1", "fam:m2"], "seeds": [1, 2]}
    assert (rd / "fam-m1" / MANIFEST).exists()

    # a member's own table only touches that member (and what reads it)
    st = states(graph, rd, "run.seeds=1,2", "toy.m2.w=3")
    assert st["fam:m2"].reason == "toy.m2.w (unset) -> 3" and st["fam:m1"].state == "done"
    assert run(graph, rd, "run.seeds=1,2", "toy.m2.w=3").ran == ["fam:m2", "agg"]
    assert json.loads((rd / "fam-m2" / "out.json").read_text())["overrides"] == {"w": 3}

    # a new seed adds instances; existing seeds stay done
    assert states(graph, rd, "run.seeds=1,2,3", "toy.m2.w=3")["agg"].reason == "new upstream sd@seed3"
    assert run(graph, rd, "run.seeds=1,2,3", "toy.m2.w=3").ran == ["sd@seed3", "sd2@seed3", "agg"]
    # one member or one seed can be targeted
    assert run(graph, rd, "run.seeds=1,2,3", "toy.m2.w=3", target="fam:m1", force=True).ran == ["fam:m1"]
    assert run(graph, rd, "run.seeds=1,2,3", "toy.m2.w=3", target="sd@seed2", force=True).ran == ["sd@seed2"]
    with pytest.raises(KdpipeError, match=r"'fam:m9' is not part of this run; .* 'fam' has: fam:m1, fam:m2"):
        run(graph, rd, "run.seeds=1,2,3", target="fam:m9")


def test_undeclared_param_read_is_refused(toy, tmp_path):
    graph = toy.build(StageGraph())

    @graph.stage("sneaky", reads=["toy.a"])
    def sneaky(ctx):
        return {"b": ctx.param("toy.b")}

    with pytest.raises(KdpipeError, match="reads 'toy.b' without declaring it"):
        run(graph, tmp_path / "run", target="sneaky")


def test_declared_output_must_exist(tmp_path, toy):
    graph = toy.build(StageGraph())

    @graph.stage("lazy", outputs=["result.json"])
    def lazy(ctx):
        return {}

    with pytest.raises(KdpipeError, match="did not write its declared output result.json"):
        run(graph, tmp_path / "run", target="lazy")


def test_user_input_identity_is_fingerprinted(toy, tmp_path):
    from kdpipe.pipeline import dir_listing

    data = tmp_path / "data"
    data.mkdir()
    (data / "a.txt").write_text("1")
    graph = toy.build(StageGraph())

    @graph.stage("ingest", identity=lambda cfg: dir_listing(data))
    def ingest(ctx):
        return {}

    rd = tmp_path / "run"
    assert run(graph, rd, target="ingest").ran == ["ingest"]
    assert run(graph, rd, target="ingest").ran == []
    (data / "b.txt").write_text("2")
    assert states(graph, rd)["ingest"].reason == "input data changed"
    assert run(graph, rd, target="ingest").ran == ["ingest"]


def test_torchrun_ranks_follow_rank_zero(toy, tmp_path):
    """Under torchrun every rank runs each stage (DDP peers) but only rank 0 locks, decides and
    writes manifests; a second launch skips everything on every rank."""
    script = tmp_path / "run_toy.py"
    script.write_text(RUN_SCRIPT)
    rd, seen = tmp_path / "run", tmp_path / "seen.txt"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(script), str(rd), str(toy.src_dir)]
    env = dict(os.environ, TOY_SEEN=str(seen), OMP_NUM_THREADS="1", PYTHONPATH=str(Path.cwd()))
    first = subprocess.run(cmd, env=env, capture_output=True, text=True)
    assert first.returncode == 0, first.stdout + first.stderr
    lines = sorted(seen.read_text().splitlines())
    assert lines == sorted(f"{s} {r}/2" for s in ("prep", "train", "report") for r in (0, 1))
    assert first.stdout.count("run   train") == 1  # only rank 0 speaks
    manifest = json.loads((rd / "train" / MANIFEST).read_text())
    assert manifest["world_size"] == 2 and set(manifest["outputs"]) == {"train.json"}
    assert (rd / "train" / "log.rank1.txt").exists()
    second = subprocess.run(cmd, env=env, capture_output=True, text=True)
    assert second.returncode == 0, second.stdout + second.stderr
    assert sorted(seen.read_text().splitlines()) == lines
    assert {s.state for s in states(toy.build(StageGraph()), rd).values()} == {"done"}


def test_runtime_settings_never_make_a_stage_stale(toy, tmp_path):
    graph = toy.build(StageGraph())

    @graph.stage("whole", reads=["toy", "toy.workers"])
    def whole(ctx):
        return {"workers": ctx.param("toy.workers")}

    rd = tmp_path / "run"
    assert run(graph, rd, target="whole").ran == ["whole"]
    assert "workers" not in json.loads((rd / "whole" / MANIFEST).read_text())["config"]["toy"]
    assert run(graph, rd, "toy.workers=8", target="whole").ran == []
    assert run(graph, rd, "toy.a=5", target="whole").ran == ["whole"]


def _parallel_graph(toy):
    graph = toy.build_expanded(StageGraph())
    graph.source = (str(toy.src_dir / "toy_stages.py"), "build_expanded")
    return graph


def test_jobs_run_independent_stages_side_by_side(toy, tmp_path, monkeypatch):
    graph = _parallel_graph(toy)
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    monkeypatch.setenv("TOY_BARRIER", str(barrier))  # fam:m1 and fam:m2 each wait for the other
    report = run(graph, tmp_path / "par", "run.seeds=[1,2]", jobs=2)
    assert sorted(report.ran) == sorted(s.name for s in stage_statuses(cfg_of(graph, "run.seeds=[1,2]"), tmp_path / "par", graph=graph))
    monkeypatch.delenv("TOY_BARRIER")
    assert run(graph, tmp_path / "par", "run.seeds=[1,2]").ran == []  # a sequential run finds it all done
    run(graph, tmp_path / "seq", "run.seeds=[1,2]")
    for name in ("agg/agg.json", "train/train.json", "fam-m2/out.json"):
        assert (tmp_path / "par" / name).read_text() == (tmp_path / "seq" / name).read_text()


def test_jobs_failure_keeps_the_other_stages_and_is_one_line(toy, tmp_path):
    graph = _parallel_graph(toy)
    with pytest.raises(KdpipeError, match="toy.fail is set") as e:
        run(graph, tmp_path, "toy.fail=true", jobs=2)
    assert "\n" not in str(e.value)
    got = states(graph, tmp_path, "toy.fail=true")
    assert got["train"].state == "failed" and got["report"].state == "missing"
    # what ran beside train finished and is kept; nothing else is failed or half-written
    others = {n: g.state for n, g in got.items() if n not in ("prep", "train", "report")}
    assert got["prep"].state == "done" and "done" in others.values()
    assert set(others.values()) <= {"done", "missing"}
    report = run(graph, tmp_path, jobs=2)
    assert set(report.ran) == {"train", "report"} | {n for n, s in others.items() if s == "missing"}


def test_jobs_need_a_graph_workers_can_rebuild(toy, tmp_path):
    with pytest.raises(KdpipeError, match="graph.source"):
        run(toy.build(StageGraph()), tmp_path, jobs=2)


def test_a_jobs_worker_rebuilds_the_stage_graph_the_cli_hands_the_runner(monkeypatch):
    """The engine never imports the stages: a worker rebuilds the graph from ``graph.source``,
    which :func:`kdpipe.stage_graph.stage_graph` sets, in a fresh interpreter as ``--jobs`` does."""
    import os
    import subprocess
    import sys

    from kdpipe.pipeline import GRAPH, STAGE_MODULES_ENV
    from kdpipe.pipeline.parallel import graph_source
    from kdpipe.stage_graph import stage_graph

    monkeypatch.delenv(STAGE_MODULES_ENV, raising=False)
    assert stage_graph() is GRAPH and "distill" in GRAPH.specs
    code = ("import sys; from kdpipe.pipeline.parallel import _load_graph; "
            "print(','.join(_load_graph((sys.argv[1], sys.argv[2])).specs))")
    out = subprocess.run([sys.executable, "-c", code, *graph_source(GRAPH)], capture_output=True, text=True, check=True,
                         env={k: v for k, v in os.environ.items() if k != STAGE_MODULES_ENV})
    assert out.stdout.strip().split(",") == list(GRAPH.specs)


def test_jobs_start_the_longest_chain_first(toy):
    from kdpipe.pipeline.parallel import chain_lengths

    graph = toy.build_expanded(StageGraph())
    plan = Plan(graph, cfg_of(graph))
    chain = chain_lengths(plan, plan.select("all"))
    # stages from each one to the end of its longest chain: prep -> train -> report, fam -> agg, sd -> sd2
    assert chain["prep"] == 3 and chain["train"] == 2 and chain["report"] == 1
    assert chain["fam:m1"] == 2 and chain["sd@seed1"] == 2 and chain["sd2@seed1"] == 1  # no run.seeds: run.seed's instance
