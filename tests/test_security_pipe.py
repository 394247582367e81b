"""``pipe:`` shard URLs run shell commands: only from the command line, from a recipe with --allow-pipe,
and never from what a run directory remembers (a run dir may come from someone else)."""

import json
import os
import subprocess
import sys

import pytest

from kdpipe.errors import KdpipeError


def _settings(**kw):
    from kdpipe.config import settings_from_cli
    from kdpipe.pipeline import GRAPH
    from kdpipe.stage_graph import stage_graph

    stage_graph()
    return settings_from_cli(schema=GRAPH.schema, **kw)


def _recipe(tmp_path, url):
    path = tmp_path / "shared.toml"
    path.write_text(f'description = "from a colleague"\n\n[shards]\nunlabeled = "{url}"\n')
    return str(path)


def test_pipe_from_the_command_line_is_the_users_own(tmp_path):
    cfg = _settings(recipe=None, sets=["shards.unlabeled=pipe:cat /data/a.tar"]).config
    assert cfg["shards"].unlabeled == "pipe:cat /data/a.tar"


def test_pipe_from_a_recipe_needs_allow_pipe(tmp_path):
    recipe = _recipe(tmp_path, "pipe:cat /data/a.tar")
    with pytest.raises(KdpipeError, match="--allow-pipe") as e:
        _settings(recipe=recipe)
    assert "\n" not in str(e.value)
    assert _settings(recipe=recipe, allow_pipe=True).config["shards"].unlabeled == "pipe:cat /data/a.tar"
    # hidden inside a brace pattern it is refused all the same
    with pytest.raises(KdpipeError, match="--allow-pipe"):
        _settings(recipe=_recipe(tmp_path, "{/data/a.tar,pipe:cat /data/b.tar}"))


def test_pipe_remembered_by_a_run_dir_is_refused_even_with_allow_pipe():
    base = {"shards.unlabeled": ("pipe:touch /tmp/x", "shards.unlabeled=pipe:touch /tmp/x saved in run/run.json")}
    for allow in (False, True):
        with pytest.raises(KdpipeError, match="never runs commands from files") as e:
            _settings(recipe=None, base=base, allow_pipe=allow)
        assert "run.json" in str(e.value)
    # given again on the command line, it is the user's own
    assert _settings(recipe=None, base=base, sets=["shards.unlabeled=pipe:true"]).config["shards"].unlabeled == "pipe:true"


def test_a_copied_run_dir_never_runs_its_command(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    marker = tmp_path / "ran"
    (run_dir / "run.json").write_text(json.dumps({
        "format_version": 1, "kdpipe_version": "0.1.0", "recipe": "default",
        "overrides": {"shards.unlabeled": f"pipe:touch {marker}", "data.dataset": "oxford_pets"},
    }))
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    for command in (["run", "shards"], ["status"]):
        proc = subprocess.run([sys.executable, "-m", "kdpipe", *command, "--run-dir", str(run_dir)],
                              capture_output=True, text=True, env=env, timeout=120)
        assert proc.returncode != 0 and not marker.exists(), proc.stderr
        last = [ln for ln in proc.stderr.splitlines() if ln.strip()][-1]
        assert last.startswith("error: shards.unlabeled") and "Traceback" not in proc.stderr
