"""The paper card's node names, typed into the real node search box, find our nodes.

A double click on the empty canvas opens the frontend's node search (1.32.9 and 1.58.1); each
card name is typed as a user would, and the node must be among the first results. ComfyUI
0.3.75 has no ``search_aliases`` in its Schema, so this holds through the display names and
node ids alone (newer servers also get the aliases).
"""

from __future__ import annotations

import pytest

# card name -> node ids it must find (any of them: the card's MemoryBank is the bank's nodes)
CARD_NAMES = {
    "LoadWan": {"WorldStereoLoadModel"},
    "load wan": {"WorldStereoLoadModel"},
    "BuildPointCloud": {"WorldStereoBuildPointCloud"},
    "TrajectoryBuilder": {"WorldStereoTrajectoryBuilder"},
    "MemoryBank": {
        "WorldStereoMemoryBankCreate",
        "WorldStereoMemoryBankUpdate",
        "WorldStereoMemoryBankSave",
        "WorldStereoMemoryBankLoad",
        "WorldStereoMemoryBankView",
    },
    "Retrieve3DFOV": {"WorldStereoRetrieve3DFOV"},
    "GGMControl": {"WorldStereoGGMControl"},
    "SSMControl": {"WorldStereoSSMControl"},
    "DMDSampler": {"WorldStereoSampler"},
    "dmd sampler": {"WorldStereoSampler"},
    "WorldMirrorRecon": {"WorldStereoWorldMirrorRecon"},
    "UmeyamaMerge": {"WorldStereoUmeyamaMerge"},
}
FIRST = 3  # "among the first results"

FOCUSED_INPUT_JS = "() => document.activeElement && document.activeElement.tagName === 'INPUT'"
READ_OPTIONS_JS = """() => Array.from(document.querySelectorAll('[role=option]'))
  .map(e => e.innerText.replace(/\\s+/g, ' ').trim()).filter(t => t)"""


def _search(page, query: str) -> list[str]:
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    for attempt in range(4):  # a double click on the empty canvas opens the node search box
        page.mouse.dblclick(600 + 40 * attempt, 400)
        try:
            page.wait_for_function(FOCUSED_INPUT_JS, timeout=4_000)
            break
        except PlaywrightTimeout:
            page.keyboard.press("Escape")
    else:
        raise AssertionError("the node search box did not open on a double click")
    page.keyboard.type(query, delay=20)
    options: list[str] = []
    for _ in range(20):  # the list updates a moment after the last key
        page.wait_for_timeout(250)
        now = page.evaluate(READ_OPTIONS_JS)
        if now and now == options:
            break
        options = now
    page.keyboard.press("Escape")
    page.wait_for_timeout(400)
    return options


def test_card_names_find_the_nodes(app_page):
    info = app_page.server.object_info()
    app_page.page.evaluate("() => window.app.graph.clear()")
    app_page.page.wait_for_timeout(300)
    missed = {}
    for query, ids in CARD_NAMES.items():
        wanted = [info[i]["display_name"] for i in ids if i in info]
        options = _search(app_page.page, query)[:FIRST]
        if not any(o.startswith(w) for o in options for w in wanted):
            missed[query] = options
    assert not missed, f"card names not among the first {FIRST} search results: {missed}"
    assert app_page.errors == []


@pytest.mark.parametrize("node_id", ["WorldStereoLoadModel", "WorldStereoSampler"])
def test_display_names_carry_the_card_words(app_page, node_id):
    """Display names a user reads: 'Load Wan…' and 'DMDSampler…' (searchable as 'load wan',
    'dmd sampler')."""
    name = app_page.server.object_info()[node_id]["display_name"].lower()
    assert ("load wan" in name) if node_id.endswith("LoadModel") else name.startswith("dmdsampler")
