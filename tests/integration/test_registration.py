"""Every node of the pack is registered, documented and does not shadow a core node."""

from __future__ import annotations

import pytest

PREFIX = "WorldStereo"


def test_pack_loads_without_import_errors(comfy_server, our_nodes):
    log = comfy_server.log()
    failures = [
        line
        for line in log.splitlines()
        if ("IMPORT FAILED" in line or "Cannot import" in line) and "custom_nodes/worldstereo" in line
    ]
    assert not failures, log[-3000:]


def test_nodes_live_under_one_category(our_nodes):
    for node_id, info in our_nodes.items():
        assert info["category"].split("/")[0] == PREFIX, f"{node_id}: category {info['category']!r}"


def test_node_ids_are_prefixed_and_shadow_no_core_node(object_info, our_nodes):
    core_ids = {k for k, v in object_info.items() if "worldstereo" not in v.get("python_module", "").lower()}
    for node_id in our_nodes:
        assert node_id.startswith(PREFIX), f"{node_id} must start with {PREFIX}"
    # Our prefix keeps our ids apart from every core id; a core id with the prefix would be shadowed.
    assert not [k for k in core_ids if k.startswith(PREFIX)]


def test_nodes_have_descriptions_and_input_tooltips(our_nodes):
    for node_id, info in our_nodes.items():
        assert info.get("description", "").strip(), f"{node_id} has no description"
        assert info.get("display_name", "").strip(), f"{node_id} has no display name"
        for group in ("required", "optional"):
            for name, spec in info["input"].get(group, {}).items():
                opts = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
                assert opts.get("tooltip", "").strip(), f"{node_id}.{name} has no tooltip"


@pytest.mark.parametrize("path", ["/extensions", "/object_info"])
def test_server_endpoints_answer(comfy_server, path):
    assert comfy_server.get(path).status_code == 200
