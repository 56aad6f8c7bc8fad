"""Convert a UI-format workflow (what users load) into the API graph ``/prompt`` takes.

The frontend does this with ``app.graphToPrompt()``; the headless main job has no browser,
so it converts here from ``/object_info``. The browser tests check both agree.
"""

from __future__ import annotations

WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}


def _is_widget(spec: list) -> bool:
    kind = spec[0]
    opts = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
    if opts.get("forceInput") or opts.get("force_input"):
        return False  # a socket only, no widget (and no widgets_values entry)
    return isinstance(kind, list) or kind in WIDGET_TYPES


def _has_control_widget(name: str, spec: list) -> bool:
    """INT inputs with a 'control after generate' companion widget in the UI."""
    opts = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
    if spec[0] not in ("INT", "FLOAT") and not isinstance(spec[0], list):
        return False
    if "control_after_generate" in opts:
        return bool(opts["control_after_generate"])
    return spec[0] == "INT" and name in ("seed", "noise_seed")


def _widget_default(spec: list):
    """The value a widget starts with in the frontend: the spec's default, else a combo's first
    option, else the type's zero value."""
    kind = spec[0]
    opts = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
    if "default" in opts:
        return opts["default"]
    options = kind if isinstance(kind, list) else opts.get("options")
    if options:
        return options[0]
    return {"INT": 0, "FLOAT": 0.0, "STRING": "", "BOOLEAN": False}.get(kind)


def ui_to_api(workflow: dict, object_info: dict) -> dict:
    """API graph ``{id: {"class_type", "inputs"}}`` of a UI workflow (muted/bypassed nodes
    dropped; links followed through Reroute nodes)."""
    links = {link[0]: link for link in workflow.get("links", [])}
    nodes = {n["id"]: n for n in workflow["nodes"]}

    def source(link_id):
        link = links[link_id]
        src_id, src_slot = link[1], link[2]
        node = nodes[src_id]
        while node["type"] == "Reroute":
            upstream = node["inputs"][0].get("link")
            link = links[upstream]
            src_id, src_slot = link[1], link[2]
            node = nodes[src_id]
        return [str(src_id), src_slot]

    api: dict = {}
    for node in workflow["nodes"]:
        if node.get("mode", 0) in (2, 4) or node["type"] in ("Reroute", "Note", "MarkdownNote"):
            continue
        info = object_info.get(node["type"])
        if info is None:
            raise KeyError(f"node type {node['type']!r} (node {node['id']}) is not installed on the server")
        specs = {**info["input"].get("required", {}), **info["input"].get("optional", {})}
        order = info.get("input_order", {})
        names = order.get("required", []) + order.get("optional", []) or list(specs)
        linked = {inp["name"]: inp.get("link") for inp in node.get("inputs", [])}
        values = list(node.get("widgets_values") or [])
        if isinstance(node.get("widgets_values"), dict):
            values_by_name = node["widgets_values"]
        else:
            values_by_name = {}
            for name in names:
                spec = specs[name]
                if not _is_widget(spec):
                    continue
                if not values:
                    # a workflow saved before the node gained this widget: the frontend keeps the
                    # widget's default (it fills only the values the file has), and so do we
                    values_by_name[name] = _widget_default(spec)
                    continue
                values_by_name[name] = values.pop(0)
                if _has_control_widget(name, spec) and values:
                    values.pop(0)
        inputs: dict = {}
        for name in names:
            if linked.get(name) is not None:
                inputs[name] = source(linked[name])
            elif name in values_by_name:
                inputs[name] = values_by_name[name]
        api[str(node["id"])] = {"class_type": node["type"], "inputs": inputs}
    return api
