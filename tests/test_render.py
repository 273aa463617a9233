"""docs/render.py: the docs' figures are what their records say, and rendering is exact."""

import json

import pytest

from .conftest import ROOT, load_script

render = load_script(ROOT / "docs" / "render.py")


@pytest.mark.parametrize("page", render.PAGES, ids=lambda p: p.name)
def test_page_matches_its_records(page):
    text = page.read_text()
    assert render.render(text) == text, (
        f"{page.name} differs from its records: run `python docs/render.py`"
    )


def test_every_block_is_used_once_and_every_marker_known():
    used = [m.group(2) for page in render.PAGES for m in render.BLOCK.finditer(page.read_text())]
    assert sorted(used) == sorted(render.BLOCKS)


def test_every_record_is_rendered():
    """A record no page shows is a figure that went stale unseen: delete it or render it."""
    shown = set()
    original = render.record

    def spy(name):
        shown.add(name)
        return original(name)

    render.record = spy
    try:
        for block in render.BLOCKS.values():
            block()
    finally:
        render.record = original
    on_disk = {p.stem for p in render.RECORDS.glob("*.json")}
    assert on_disk - shown == set()


def test_only_the_text_between_markers_changes(monkeypatch):
    monkeypatch.setitem(render.BLOCKS, "x", lambda: "new\n")
    text = "before 1.0\n<!-- render: x -->\nold 2.0\n<!-- end render -->\nafter 3.0\n"
    assert render.render(text) == text.replace("old 2.0", "new")
    with pytest.raises(KeyError, match="unknown render block 'y'"):
        render.render("<!-- render: y -->\n<!-- end render -->")


@pytest.mark.parametrize(
    "seconds, text",
    [(38.4, "38 s"), (341.0, "5 min 41 s"), (3599.6, "1 h 0 min"), (3725, "1 h 2 min")],
)
def test_duration(seconds, text):
    assert render.duration(seconds) == text


def test_eval_sentence_states_the_record():
    r = {
        "num_samples": 2000,
        "sampler": "edm",
        "nfe": 35,
        "guidance_scale": 2.0,
        "sampling_seconds": 61.2,
        "fid": 0.12345,
        "fid_floor": 0.0061,
        "precision": 0.8,
        "recall": 0.7,
        "hf_ratio": 1.104,
        "cond_accuracy": 0.9975,
    }
    assert render.eval_sentence(r) == (
        "2,000 samples from `edm` (35 NFE, guidance w = 2): FID 0.123 "
        "(floor 0.006), precision 0.800, recall 0.700, HF ratio 1.10, conditional accuracy 99.75%"
    )
    r.update(guidance_scale=None, cond_accuracy=None)
    assert "guidance" not in render.eval_sentence(r)
    assert "conditional" not in render.eval_sentence(r)


def test_h100_rows_parse_the_benchmark_log(tmp_path, monkeypatch):
    (tmp_path / "run_h100_bf16.log").write_text(
        "building seed_uncond / jaxdiff ...\n"
        "seed_uncond   jaxdiff        train  200.0 img/s  sample  20.00/s  1 ms/eval\n"
        "seed_uncond   torch_eager    train  50.0 img/s  sample  4.00/s  2 ms/eval\n"
    )
    monkeypatch.setattr(render, "RESULTS", tmp_path)
    assert render.h100_rows() == {
        ("seed_uncond", "jaxdiff"): (200.0, 20.0),
        ("seed_uncond", "torch_eager"): (50.0, 4.0),
    }
    assert "| 4.00x, 5.00x |" in render.h100_block()


def test_records_name_their_command_date_and_machine():
    for path in render.RECORDS.glob("*.json"):
        r = json.loads(path.read_text())
        assert r["command"].startswith("python main.py --config="), path.name
        assert r["date"] and r["machine"] and r["jax"], path.name
