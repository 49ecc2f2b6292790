"""The pipeline's stage graph: outputs cached under a hash of config and inputs; a second run
does nothing, a changed stage re-runs only what depends on it, a killed stage resumes."""

import json
import os

import pytest

from thinkrl.pipeline.graph import Graph, PipelineError, Stage, references


def make_kinds(calls):
    """Stage kinds that record each call and write real outputs from their inputs."""

    def write(ctx):
        calls.append((ctx.name, ctx.resume))
        text = ctx.settings.get("text", "")
        for src in ctx.settings.get("read", []):
            text += "|" + open(src).read()
        once = ctx.settings.get("crash_once")  # a file: crash unless it exists, and create it
        if ctx.settings.get("crash") and not ctx.resume or once and not os.path.exists(once):
            if once:
                open(once, "w").close()
            (ctx.out / "half").write_text("half done")
            raise RuntimeError("killed")
        out = ctx.out / "data.txt"
        out.write_text(text)
        return {"outputs": {"data": str(out)}, "length": len(text), "written": {"files": [str(out)]}}

    return {"write": write}


def r1_like(text_b="b"):
    return [Stage("a", "write", {"text": "a"}),
            Stage("b", "write", {"text": text_b, "read": ["${a.data}"]}),
            Stage("c", "write", {"text": "c", "read": ["${a.data}"]}),
            Stage("d", "write", {"text": "d", "read": ["${b.data}", "${c.data}"]})]


def test_runs_in_dependency_order_and_resolves_outputs(tmp_path):
    calls = []
    records = Graph(r1_like(), make_kinds(calls), tmp_path).run()
    assert [n for n, _ in calls] == ["a", "b", "c", "d"]
    assert open(records["d"]["outputs"]["data"]).read() == "d|b|a|c|a"
    assert records["d"]["inputs"].keys() == {"b", "c"}
    # paths a stage reports in its summary name its final directory, not the .partial it ran in
    assert records["d"]["summary"]["written"]["files"] == [records["d"]["outputs"]["data"]]
    assert ".partial" not in records["d"]["outputs"]["data"]
    index = json.loads((tmp_path / "stages.json").read_text())
    assert set(index) == {"a", "b", "c", "d"}


def test_a_second_run_does_nothing(tmp_path):
    calls = []
    Graph(r1_like(), make_kinds(calls), tmp_path).run()
    calls.clear()
    g = Graph(r1_like(), make_kinds(calls), tmp_path)
    assert [s for _, s in g.plan()] == ["cached"] * 4
    g.run()
    assert calls == []


def test_a_changed_stage_reruns_only_what_depends_on_it(tmp_path):
    calls = []
    first = Graph(r1_like(), make_kinds(calls), tmp_path)
    first.run()
    calls.clear()
    changed = Graph(r1_like(text_b="B"), make_kinds(calls), tmp_path)
    assert dict(changed.plan()) == {"a": "cached", "b": "run", "c": "cached", "d": "run"}
    assert changed.keys["a"] == first.keys["a"] and changed.keys["c"] == first.keys["c"]
    assert changed.keys["b"] != first.keys["b"] and changed.keys["d"] != first.keys["d"]
    records = changed.run()
    assert [n for n, _ in calls] == ["b", "d"]
    assert open(records["d"]["outputs"]["data"]).read() == "d|B|a|c|a"
    # the old outputs are kept: changing it back is free
    calls.clear()
    Graph(r1_like(), make_kinds(calls), tmp_path).run()
    assert calls == []


def test_a_changed_input_file_changes_the_key(tmp_path):
    f = tmp_path / "prompts.txt"
    f.write_text("one")
    stages = [Stage("a", "write", {"read": ["${file:%s}" % f]})]
    calls = []
    g1 = Graph(stages, make_kinds(calls), tmp_path / "root")
    assert open(g1.run()["a"]["outputs"]["data"]).read() == "|one"
    f.write_text("two")
    g2 = Graph(stages, make_kinds(calls), tmp_path / "root")
    assert g2.keys["a"] != g1.keys["a"]
    assert open(g2.run()["a"]["outputs"]["data"]).read() == "|two"


def test_a_killed_stage_resumes_and_finished_ones_are_kept(tmp_path):
    stages = r1_like()
    stages[2] = Stage("c", "write", {"text": "c", "read": ["${a.data}"], "crash": True})
    calls = []
    g = Graph(stages, make_kinds(calls), tmp_path)
    with pytest.raises(RuntimeError, match="killed"):
        g.run()
    assert g.is_done("a") and g.is_done("b") and not g.is_done("c")
    assert dict(g.plan())["c"] == "resume"
    calls.clear()
    records = Graph(stages, make_kinds(calls), tmp_path).run()
    assert calls == [("c", True), ("d", False)]
    assert (tmp_path / "stages" / f"c-{g.keys['c']}" / "half").exists()  # the stage saw its own partial work
    assert records["c"]["resumed"] is True


def test_a_stage_killed_after_its_record_was_written_is_only_moved_into_place(tmp_path):
    calls = []
    g = Graph(r1_like(), make_kinds(calls), tmp_path)
    before = g.run()
    final = g.directory("b")
    partial, aside = final.with_name(final.name + ".partial"), final.with_name(final.name + ".old")
    final.rename(partial)  # the state a kill leaves between stage.json and the rename
    aside.mkdir()  # and older copies a kill left half-deleted, of this stage and of a cached one
    (aside / "stale").write_text("x")
    cached_aside = g.directory("a").with_name(g.directory("a").name + ".old")
    cached_aside.mkdir()
    assert dict(g.plan())["b"] == "resume"
    calls.clear()
    after = Graph(r1_like(), make_kinds(calls), tmp_path).run()
    assert calls == []  # nothing ran again
    assert after == before
    assert final.is_dir() and not partial.exists() and not aside.exists() and not cached_aside.exists()


def test_a_kind_that_cannot_resume_starts_over_in_an_empty_directory(tmp_path):
    stages = [Stage("a", "write", {"text": "a", "crash_once": str(tmp_path / "crashed")})]
    calls = []
    with pytest.raises(RuntimeError, match="killed"):
        Graph(stages, make_kinds(calls), tmp_path, resumable=set()).run()
    g = Graph(stages, make_kinds(calls), tmp_path, resumable=set())
    assert dict(g.plan())["a"] == "resume"
    g.run()
    assert calls == [("a", False), ("a", False)]  # told to start afresh, not to resume
    assert not (g.directory("a") / "half").exists()  # in an emptied directory
    assert g.record("a")["resumed"] is False


def test_targets_run_only_their_inputs(tmp_path):
    calls = []
    Graph(r1_like(), make_kinds(calls), tmp_path).run(["b"])
    assert [n for n, _ in calls] == ["a", "b"]


def test_mistakes_fail_at_start_with_a_message(tmp_path):
    kinds = make_kinds([])
    with pytest.raises(PipelineError, match="no stage 'zero'"):
        Graph([Stage("a", "write", {"read": ["${zero.model}"]})], kinds, tmp_path)
    with pytest.raises(PipelineError, match="unknown kind 'grpoo'"):
        Graph([Stage("a", "grpoo")], kinds, tmp_path)
    with pytest.raises(PipelineError, match="cycle"):
        Graph([Stage("a", "write", {"read": ["${b.data}"]}), Stage("b", "write", {"read": ["${a.data}"]})], kinds, tmp_path)
    with pytest.raises(PipelineError, match="no such file"):
        Graph([Stage("a", "write", {"read": ["${file:/nonexistent/x}"]})], kinds, tmp_path)
    g = Graph([Stage("a", "write"), Stage("b", "write", {"read": ["${a.model}"]})], kinds, tmp_path)
    with pytest.raises(PipelineError, match="has outputs \\['data'\\], not 'model'"):
        g.run()


def test_references_are_found_anywhere_in_the_settings():
    assert references({"x": ["${a.model}", {"y": "prefix ${b.data} and ${c.data}"}], "n": 3}) == {"a", "b", "c"}
