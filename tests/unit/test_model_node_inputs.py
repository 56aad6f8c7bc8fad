"""The model nodes' checks on what they are given (nodes/models.py), run against ComfyUI 0.3.75.

* ``checkpoint``: with several ``worldstereo`` model folders (extra_model_paths.yaml), the value is
  looked up in each, so it must stay inside each one it is joined with: a value inside the first folder
  may lead out of the second through ``..`` or a hidden symlink. Links the admin put into a model folder
  (the ones the listing follows) keep working.

* ``positive`` / ``negative`` CONDITIONING: WorldStereo reads one prompt embedding; several entries
  (Conditioning Combine) or a batch of prompts are refused with what to connect instead, before the
  sampler does any work, instead of silently using the first.

* ``attention_backend``: the loader's combo is a copy of the core's list (importing the nodes must not
  import diffusers); the test holds the two equal.

All cases run in one fresh interpreter (the pack loaded by path, as ComfyUI loads it); the test
functions check its answers.
"""

from __future__ import annotations

import os

import pytest

from testsupport import COMFY_START, LOAD_PACK, run_comfy_harness

HARNESS = (
    COMFY_START
    + r"""
import folder_paths
"""
    + LOAD_PACK
    + r"""
models = sys.modules["worldstereo_pack.nodes.models"]
result = {"diffusers_imported": "diffusers" in sys.modules}  # by loading the pack (the cases below do)


def outcome(call):
    try:
        return {"ok": call()}
    except Exception as e:  # the test checks the type and the message
        return {"error": type(e).__name__, "message": str(e)}


# ---- checkpoint: two worldstereo model folders of different names ----------------------------
root = os.path.realpath(tempfile.mkdtemp())


def checkpoint_folder(path):
    os.makedirs(path)
    for name in ("config.json", "model.safetensors"):
        with open(os.path.join(path, name), "w") as f:
            f.write("{}")


first, second = os.path.join(root, "m1", "worldstereo"), os.path.join(root, "m2", "extra")
checkpoint_folder(os.path.join(first, "ckpt-a"))
checkpoint_folder(os.path.join(second, "ckpt-b"))
checkpoint_folder(os.path.join(root, "disk", "ckpt-c"))  # the admin's: linked into the second folder
os.symlink(os.path.join(root, "disk", "ckpt-c"), os.path.join(second, "linked"))
checkpoint_folder(os.path.join(root, "m2", "worldstereo", "evil"))  # beside the second folder, not in it
checkpoint_folder(os.path.join(root, "outside", "secret"))
os.symlink(os.path.join(root, "outside", "secret"), os.path.join(second, ".hidden"))  # the listing skips it
folder_paths.folder_names_and_paths["worldstereo"] = ([first, second], {".safetensors", ".json"})

probed = []
real_isfile = os.path.isfile


def recording_isfile(path):
    probed.append(os.path.realpath(path))
    return real_isfile(path)


os.path.isfile = recording_isfile
result["listed"] = models.list_checkpoints()
result["checkpoint"] = {
    value: outcome(lambda: models._checkpoint_path(value))
    for value in (
        "ckpt-a/model.safetensors",
        "ckpt-b",
        "linked/model.safetensors",
        "../worldstereo/evil",
        "../worldstereo/evil/model.safetensors",
        ".hidden",
        ".hidden/model.safetensors",
    )
}
os.path.isfile = real_isfile
result["root"] = root
result["probed"] = probed

# ---- CONDITIONING: one entry, batch 1 --------------------------------------------------------
import torch


def cond(*batches, tokens=7):
    return [[torch.randn(b, tokens, 16), {"pooled_output": None}] for b in batches]


def embeddings(positive, negative=None):
    got = models.comfy_embeddings(positive, negative, None)
    return [list(t.shape) if t is not None else None for t in (got.prompt_embeds, got.negative_prompt_embeds)]


result["conditioning"] = {
    "one": outcome(lambda: embeddings(cond(1, tokens=600), cond(1))),
    "combined": outcome(lambda: embeddings(cond(1, 1))),
    "batch": outcome(lambda: embeddings(cond(2))),
    "negative_batch": outcome(lambda: embeddings(cond(1), cond(3))),
}


class VisionOutput:  # what CLIP Vision Encode returns, reduced to the field the conversion reads
    def __init__(self, batch):
        self.penultimate_hidden_states = torch.randn(batch, 257, 8)


def image_embeds(batch):
    return list(models.comfy_embeddings(None, None, VisionOutput(batch)).image_embeds.shape)


result["clip_vision"] = {"one": outcome(lambda: image_embeds(1)), "batch": outcome(lambda: image_embeds(2))}
result["attention_backends"] = models.ATTENTION_BACKENDS
sampler = next(n for n in node_list if n.GET_SCHEMA().node_id == "WorldStereoSampler")
result["sampler_combined"] = outcome(  # refused before the model is touched (no model here at all)
    lambda: sampler.execute(
        model=None, image=None, ggm=None, prompt="", negative_prompt="", sampler="auto", steps=0, cfg=5.0,
        shift=0.0, seed=0, positive=cond(1, 1),
    ) and None
)
print("RESULT " + json.dumps(result))
"""
)


@pytest.fixture(scope="module")
def answers() -> dict:
    return run_comfy_harness(HARNESS)


@pytest.mark.parametrize(
    "value", ["../worldstereo/evil", "../worldstereo/evil/model.safetensors", ".hidden", ".hidden/model.safetensors"]
)
def test_checkpoint_leading_out_of_the_second_model_folder_is_refused_unread(answers, value):
    """The value lies inside the first folder, but joined with the second it names a checkpoint outside it
    (through '..', or a hidden link the listing does not follow): refused with the path error, and no file
    outside the model folders was even looked at."""
    got = answers["checkpoint"][value]
    assert got.get("error") == "UnsafePathError", got
    assert "not inside" in got["message"] and "worldstereo model folders" in got["message"]
    outside = [os.path.join(answers["root"], d) for d in ("outside", os.path.join("m2", "worldstereo"))]
    assert not [p for p in answers["probed"] if any(p.startswith(o + os.sep) for o in outside)]


def test_checkpoints_in_every_model_folder_still_load(answers):
    """Listed checkpoints of both folders resolve, including one the admin linked in from another disk."""
    root = answers["root"]
    assert answers["listed"] == ["ckpt-a/model.safetensors", "ckpt-b/model.safetensors", "linked/model.safetensors"]
    assert answers["checkpoint"]["ckpt-a/model.safetensors"] == {
        "ok": os.path.join(root, "m1", "worldstereo", "ckpt-a")
    }
    assert answers["checkpoint"]["ckpt-b"] == {"ok": os.path.join(root, "m2", "extra", "ckpt-b")}
    assert answers["checkpoint"]["linked/model.safetensors"] == {"ok": os.path.join(root, "m2", "extra", "linked")}


def test_one_conditioning_entry_of_batch_1_is_the_prompt_cut_to_512_tokens(answers):
    assert answers["conditioning"]["one"] == {"ok": [[1, 512, 16], [1, 7, 16]]}


@pytest.mark.parametrize(
    ("case", "words"),
    [
        ("combined", ("positive", "2 entries", "single CLIP Text Encode")),
        ("batch", ("positive", "batch of 2", "batch 1")),
        ("negative_batch", ("negative", "batch of 3", "batch 1")),
    ],
)
def test_several_conditioning_entries_or_prompts_are_refused(answers, case, words):
    """Conditioning Combine's entries or a batch of prompts would be cut to the first without a word."""
    got = answers["conditioning"][case]
    assert got.get("error") == "InvalidInputError", got
    assert all(w in got["message"] for w in words), got["message"]


def test_clip_vision_output_of_one_image_is_used_and_a_batch_is_refused(answers):
    """A batch of image encodings was cut to its first image without a word."""
    assert answers["clip_vision"]["one"] == {"ok": [1, 257, 8]}
    got = answers["clip_vision"]["batch"]
    assert got.get("error") == "InvalidInputError", got
    assert "batch of 2" in got["message"] and "single image" in got["message"], got["message"]


def test_sampler_refuses_combined_conditioning_before_touching_the_model(answers):
    got = answers["sampler_combined"]
    assert got.get("error") == "InvalidInputError" and "2 entries" in got["message"], got


def test_loader_attention_backends_are_default_and_the_cores_list(answers):
    from worldstereo_core.models.transformer_worldstereo import ATTENTION_BACKENDS

    assert answers["attention_backends"] == ["default", *ATTENTION_BACKENDS]
    # why the names live in worldstereo_core.attention_backends: loading the pack leaves diffusers out
    assert not answers["diffusers_imported"]
