"""``kdpipe run`` / ``kdpipe status`` end to end on the toy graph (loaded via KDPIPE_STAGE_MODULES).

Each command runs in a subprocess so the toy stages never enter this process's global registry.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

from test_runner_toy_graph import TOY_SOURCE


def kdpipe(tmp_path, *args, graph="build"):
    stages = tmp_path / f"toy_cli_{graph}.py"
    if not stages.exists():
        stages.write_text(TOY_SOURCE + f"\nfrom kdpipe.pipeline import GRAPH\n\n{graph}(GRAPH)\n")
    env = dict(os.environ, KDPIPE_STAGE_MODULES=str(stages), CI="true")
    return subprocess.run([sys.executable, "-m", "kdpipe", *args], cwd=tmp_path, env=env, capture_output=True, text=True)


def test_run_then_status_then_change_one_setting(tmp_path):
    (tmp_path / "toy.toml").write_text("[toy]\nb = 0.25\nsteps = 4\n")
    rd = tmp_path / "runs" / "x"
    first = kdpipe(tmp_path, "run", "all", "--recipe", "toy.toml", "--run-dir", str(rd), "--set", "toy.a=3")
    assert first.returncode == 0, first.stderr
    assert "run   prep (missing)" in first.stderr and "done  train" in first.stderr
    assert "train: step 4/4 (100%)" in first.stderr  # plain progress lines under CI=true
    saved = json.loads((rd / "run.json").read_text())
    assert saved["overrides"] == {"toy.a": "3"} and saved["recipe"] == "toy.toml"
    assert json.loads((rd / "prep" / "prep.json").read_text()) == {"a": 3}

    # no flags: the run dir's saved settings apply, so nothing is stale
    again = kdpipe(tmp_path, "run", "all", "--run-dir", str(rd))
    assert again.returncode == 0, again.stderr
    assert "nothing to do" in again.stderr and "skip  train: done  acc=" in again.stderr

    # status previews a change without running or saving it
    st = kdpipe(tmp_path, "status", "--run-dir", str(rd), "--set", "toy.b=0.5")
    assert st.returncode == 0, st.stderr
    lines = {line.split()[0]: line for line in st.stdout.splitlines()[2:] if line.strip()}
    assert lines["prep"].split()[1] == "done"
    assert lines["train"].split()[1] == "stale" and lines["train"].endswith("toy.b 0.25 -> 0.5")
    assert "upstream train changed" in lines["report"]
    assert st.stdout.strip().splitlines()[-1] == "1 done, 2 stale"
    assert json.loads((rd / "run.json").read_text())["overrides"] == {"toy.a": "3"}

    # one changed setting on the command line is merged with the saved ones
    changed = kdpipe(tmp_path, "run", "all", "--run-dir", str(rd), "--set", "toy.b=0.5")
    assert changed.returncode == 0, changed.stderr
    assert "skip  prep" in changed.stderr and "run   train (stale: toy.b 0.25 -> 0.5)" in changed.stderr
    assert json.loads((rd / "run.json").read_text())["overrides"] == {"toy.a": "3", "toy.b": "0.5"}


def test_bad_input_is_one_error_line(tmp_path):
    (tmp_path / "toy.toml").write_text("")
    rd = str(tmp_path / "r")
    cases = [
        (["run", "all", "--recipe", "toy.toml", "--run-dir", rd, "--set", "toy.bb=1"],
         "error: unknown config key 'toy.bb' (from --set toy.bb=1); did you mean 'toy.b'?"),
        (["run", "all", "--recipe", "toy.toml", "--run-dir", rd, "--set", "toy.steps=many"],
         "error: toy.steps: expected an integer, got 'many' (from --set toy.steps=many)"),
        (["run", "trian", "--recipe", "toy.toml", "--run-dir", rd], "error: unknown stage 'trian'; did you mean 'train'?"),
        (["run", "all", "--recipe", "nope", "--run-dir", rd], "error: unknown recipe 'nope';"),
        (["run", "report", "--recipe", "toy.toml", "--run-dir", rd],
         "error: stage report needs train, which is missing; run `kdpipe run report --with-deps`"),
    ]
    for args, expected in cases:
        out = kdpipe(tmp_path, *args)
        assert out.returncode == 2, (args, out.stderr)
        errors = [line for line in out.stderr.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and errors[0].startswith(expected), (args, out.stderr)
        assert "Traceback" not in out.stderr


def test_seeds_shortcut_runs_per_seed_instances(tmp_path):
    (tmp_path / "toy.toml").write_text("")
    rd = tmp_path / "r"
    args = ("--recipe", "toy.toml", "--run-dir", str(rd), "--seeds", "4,5")
    out = kdpipe(tmp_path, "run", "sd2", "--with-deps", *args, graph="build_expanded")
    assert out.returncode == 0, out.stderr
    ran = [line.split()[1] for line in out.stderr.splitlines() if line.startswith("run   ")]
    assert ran == ["prep", "sd@seed4", "sd@seed5", "sd2@seed4", "sd2@seed5"]
    assert json.loads((rd / "sd2-seed5" / "seed.json").read_text())["seed"] == 5
    st = kdpipe(tmp_path, "status", "--run-dir", str(rd), graph="build_expanded")
    states = {line.split()[0]: line.split()[1] for line in st.stdout.splitlines()[2:-1]}
    assert states["sd@seed4"] == "done" and states["sd2@seed5"] == "done"
    assert states["fam:m1"] == "missing" and states["train"] == "missing"


def test_ctrl_c_keeps_finished_stages_and_resumes(tmp_path):
    import signal
    import time

    (tmp_path / "toy.toml").write_text("[toy]\nsteps = 12\n")
    rd = tmp_path / "r"
    stages = tmp_path / "toy_cli_build.py"
    stages.write_text(TOY_SOURCE + "\nfrom kdpipe.pipeline import GRAPH\n\nbuild(GRAPH)\n")
    env = dict(os.environ, KDPIPE_STAGE_MODULES=str(stages), CI="true", TOY_SLEEP="0.3")
    # a user's Ctrl-C: the child must not inherit an ignored SIGINT (a job started with `&` from a
    # script ignores it, and so would every process it starts)
    proc = subprocess.Popen([sys.executable, "-m", "kdpipe", "run", "all", "--recipe", "toy.toml", "--run-dir", str(rd)],
                            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    state_file = rd / "train" / "ckpt" / "state.json"
    deadline = time.monotonic() + 120  # generous: the machine is shared; this is not a timing assertion
    while time.monotonic() < deadline and proc.poll() is None:
        if state_file.exists() and json.loads(state_file.read_text())["step"] >= 2:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate()
    assert proc.returncode == 130, err
    assert "interrupted: finished stages are kept" in err and "Traceback" not in err
    assert not (rd / "train" / "failed.json").exists()

    st = kdpipe(tmp_path, "status", "--run-dir", str(rd))
    rows = {line.split()[0]: line for line in st.stdout.splitlines()[2:-1]}
    assert rows["prep"].split()[1] == "done"
    assert rows["train"].split()[1] == "missing" and rows["train"].endswith("interrupted; will resume from its checkpoint")

    again = kdpipe(tmp_path, "run", "all", "--run-dir", str(rd))
    assert again.returncode == 0, again.stderr
    assert "skip  prep" in again.stderr
    assert json.loads((rd / "train" / "manifest.json").read_text())["metrics"]["resumed_from"] >= 2


def test_a_bad_saved_setting_names_the_run_json(tmp_path):
    (tmp_path / "toy.toml").write_text("")
    rd = tmp_path / "r"
    rd.mkdir()
    (rd / "run.json").write_text(json.dumps({"format_version": 1, "recipe": str(tmp_path / "toy.toml"),
                                             "overrides": {"toy.stesp": "3"}}))
    out = kdpipe(tmp_path, "status", "--run-dir", str(rd))
    assert out.returncode == 2
    assert out.stderr.strip() == (f"error: unknown config key 'toy.stesp' (from toy.stesp=3 saved in {rd}/run.json); "
                                  "did you mean 'toy.steps'?")


def test_status_of_a_failed_run_exits_non_zero_with_the_whole_reason(tmp_path):
    (tmp_path / "toy.toml").write_text("")
    rd = tmp_path / "r"
    failed = kdpipe(tmp_path, "run", "all", "--recipe", "toy.toml", "--run-dir", str(rd), "--set", "toy.fail=true")
    assert failed.returncode == 2
    st = kdpipe(tmp_path, "status", "--run-dir", str(rd))
    assert st.returncode == 1, st.stdout  # scripts see that the run is not healthy
    assert "toy.fail is set; unset it to train" in st.stdout and st.stdout.strip().endswith("1 failed, 1 missing")


def test_status_of_a_run_dir_that_does_not_exist_is_one_error_line(tmp_path):
    out = kdpipe(tmp_path, "status", "--run-dir", str(tmp_path / "typo"))
    assert out.returncode == 2 and out.stderr.strip() == f"error: run dir {tmp_path / 'typo'} does not exist (give the --run-dir of an earlier `kdpipe run`)"


def test_version_and_short_help(tmp_path):
    import kdpipe as package

    assert kdpipe(tmp_path, "--version").stdout.strip() == f"kdpipe {package.__version__}"
    short = kdpipe(tmp_path, "-h")
    assert short.returncode == 0 and "Usage:" in short.stdout and "classify" in short.stdout


def test_methods_counts_need_no_weights(tmp_path):
    # the README's `kdpipe methods --backbone vit-b-16` offline: shapes only, nothing downloaded
    out = kdpipe(tmp_path, "methods", "--backbone", "vit-b-16")
    assert out.returncode == 0, out.stderr
    assert any(line.split("│")[1].strip() == "promptkd" and "1,013,760" in line for line in out.stdout.splitlines() if line.count("│") > 3)
