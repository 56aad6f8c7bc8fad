"""Run a UI-format workflow headless through a real ComfyUI server and collect its outputs.

    python scripts/run_workflow.py WORKFLOW.json OUTPUT_DIR

Starts ComfyUI (from the test environment) with this pack in ``custom_nodes``, converts the
workflow to an API graph with the server's ``/object_info``, queues it, prints progress, and
copies every file the output nodes wrote into ``OUTPUT_DIR``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from comfy_server import ComfyServer
from workflow_api import ui_to_api


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("workflow", type=Path)
    parser.add_argument("output_dir", type=Path)
    parser.add_argument("--timeout", type=float, default=1800)
    args = parser.parse_args(argv)

    workflow = json.loads(args.workflow.read_text())
    started = time.time()
    with ComfyServer() as server:
        api = ui_to_api(workflow, server.object_info())

        def show(event):
            if event.get("type") == "progress":
                d = event["data"]
                print(f"  node {d.get('node')}: {d['value']}/{d['max']}", flush=True)
            elif event.get("type") == "executing" and event["data"].get("node"):
                print(f"running node {event['data']['node']}", flush=True)

        result = server.run(api, timeout=args.timeout, workflow=workflow, on_event=show)
        if result.status != "success":
            err = result.error or {}
            print(
                f"workflow {result.status}: {err.get('exception_message', '')}\n{server.log()[-3000:]}", file=sys.stderr
            )
            return 1
        args.output_dir.mkdir(parents=True, exist_ok=True)
        copied = []
        for f in server.output_files(result):
            if f.is_file():
                dst = args.output_dir / f.name
                shutil.copy2(f, dst)
                copied.append(dst)
    print(f"done in {time.time() - started:.1f}s; {len(copied)} files in {args.output_dir}:")
    for f in copied:
        print(f"  {f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
