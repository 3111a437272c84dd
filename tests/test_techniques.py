"""Every technique of the research catalogue (its §1–§10 headings, copied to tests/fixtures) has a plugin or a
written reason in plugins/techniques.toml, and `pgolf plugins list` prints the ones without a plugin."""

from __future__ import annotations

from pathlib import Path

from core.registry import Registry
from pgolf.cli import main
from pgolf.techniques import load_catalogue, without_plugin

HEADINGS = (Path(__file__).parent / "fixtures" / "technique_headings.txt").read_text(encoding="utf-8").splitlines()
# Model-side plugins another branch of issue #15 is writing (plugins/<name>.py there).
IN_PROGRESS = {"value_embeddings", "gated_attn", "attn_output_gate", "sparse_attn_gate", "quant_gate",
               "trigram_hash", "parallel_lanes", "overtone_init"}


def test_every_heading_has_a_plugin_or_a_reason():
    entries = {f"{e['section']} {e['title']}": e for e in load_catalogue()}
    assert sorted(entries) == sorted(HEADINGS), "plugins/techniques.toml and the catalogue's headings differ"
    known = set(Registry().names())
    for heading, e in entries.items():
        unknown = [p for p in e.get("plugins", []) if p not in known and p not in IN_PROGRESS]
        assert not unknown or e.get("reason"), f"{heading}: plugins {unknown} do not exist and no reason is given"
        assert e.get("plugins") or e.get("reason"), heading


def test_list_prints_what_has_no_plugin_and_why(capsys):
    assert main(["plugins", "list"]) == 0
    out = capsys.readouterr().out
    assert "\nno plugin (plugins/techniques.toml):\n" in out
    assert "  §10.5 SLOT (not legal) and other eval-time adaptations: SLOT and ETLB ruled illegal" in out
    assert "  §3.1 FlashAttention 3: core: core.attention = fa3" in out
    assert "§8.2 SWA" not in out.split("no plugin")[1]  # swa is a plugin


def test_without_plugin_names_the_missing_plugin():
    entries = [{"section": "9.9", "title": "T", "plugins": ["nope"]}, {"section": "1", "title": "U", "plugins": ["a"]}]
    assert without_plugin(entries, {"a"}) == ["§9.9 T: plugin nope not in this build"]
