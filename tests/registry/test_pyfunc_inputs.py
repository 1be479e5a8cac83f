"""Every input form a user would try, through ``mlflow.pyfunc.load_model('models:/NAME@champion')``.

One tiny model is registered once on the real MLflow server (artefacts on the real SeaweedFS S3); each form's
answers must equal what the library model generates for the same images and instructions.
"""

from __future__ import annotations

import base64
import uuid

import pandas as pd
import pytest

from tests.registry.conftest import png_bytes
from vlm.models.pyfunc import DEFAULT_CAPTION_INSTRUCTION, InputError

PARAMS = {"num_beams": 1, "max_new_tokens": 4}
RED, GREEN, BLUE = (220, 30, 30), (30, 170, 60), (30, 70, 220)
QUESTION = "What colour is the shape?"


@pytest.fixture(scope="module")
def served(mlflow_server, s3_server, tiny_artefact, tmp_path_factory):
    """(pyfunc loaded by alias, library model, image files, S3 prefix) with the servers' env set."""
    import mlflow

    from vlm import storage
    from vlm.models import load
    from vlm.registry import promote, register_model

    with pytest.MonkeyPatch.context() as mp:
        for key, value in {**s3_server.env(), "MLFLOW_TRACKING_URI": mlflow_server.uri}.items():
            mp.setenv(key, value)
        mlflow.set_tracking_uri(mlflow_server.uri)
        name = f"vlm-inputs-{uuid.uuid4().hex[:8]}"
        version = register_model(tiny_artefact, name, {"cider": 0.1}, {})
        promote(name, version, force=True)
        folder = tmp_path_factory.mktemp("images")
        files = {}
        for label, rgb in {"red": RED, "green": GREEN, "blue": BLUE}.items():
            files[label] = folder / f"{label}.png"
            files[label].write_bytes(png_bytes(rgb, size=32))
        (folder / "notes.png").write_text("not an image")
        s3 = f"s3://vlm-test/{uuid.uuid4().hex[:12]}"
        storage.write_bytes(f"{s3}/blue.png", files["blue"].read_bytes())
        model = mlflow.pyfunc.load_model(f"models:/{name}@champion")
        yield model, load(tiny_artefact), files, s3
        mlflow.set_tracking_uri(None)


def direct(library, files, pairs):
    """What the library model says for [(image label, question or None)]."""
    from PIL import Image

    images = [Image.open(files[label]).convert("RGB") for label, _ in pairs]
    asked = [i for i, (_, q) in enumerate(pairs) if q]
    described = [i for i, (_, q) in enumerate(pairs) if not q]
    answers = iter(library.answer([images[i] for i in asked], [pairs[i][1] for i in asked], **PARAMS) if asked else [])
    captions = iter(library.generate([images[i] for i in described], instructions=DEFAULT_CAPTION_INSTRUCTION,
                                     **PARAMS) if described else [])
    return [next(answers) if q else next(captions) for _, q in pairs]


def test_every_input_form_answers_like_the_library_model(served):
    model, library, files, s3 = served
    red, green, blue = (str(files[k]) for k in ("red", "green", "blue"))
    pairs = [("red", QUESTION), ("green", None), ("blue", QUESTION)]
    want = direct(library, files, pairs)
    assert want != direct(library, files, [(label, QUESTION) for label, _ in pairs])  # questions matter here
    as_bytes = [files[k].read_bytes() for k in ("red", "green", "blue")]
    b64 = [base64.b64encode(b).decode() for b in as_bytes]
    questions = [QUESTION, None, QUESTION]
    forms = {
        "DataFrame of bytes": pd.DataFrame({"image": as_bytes, "question": questions}),
        "DataFrame of paths, NaN question": pd.DataFrame({"image": [red, green, blue],
                                                          "question": [QUESTION, float("nan"), QUESTION]}),
        "dict of lists (paths)": {"image": [red, green, blue], "question": questions},
        "dict of lists, empty question": {"image": [red, green, blue], "question": [QUESTION, "", QUESTION]},
        "dict of lists (base64)": {"image": b64, "question": questions},
        "list of dicts": [{"image": red, "question": QUESTION}, {"image": as_bytes[1]},
                          {"image": f"{s3}/blue.png", "question": QUESTION}],
        "mixed: s3 URI, data URI, file URI": {"image": [f"file://{red}", "data:image/png;base64," + b64[1],
                                                        f"{s3}/blue.png"], "question": questions},
    }
    for form, value in forms.items():
        assert model.predict(value, params=PARAMS) == want, form


def test_one_row_and_captions_without_questions(served):
    model, library, files, _ = served
    red = str(files["red"])
    captions = direct(library, files, [("red", None), ("green", None)])
    assert model.predict({"image": [red]}, params=PARAMS) == captions[:1]  # the README's example
    assert model.predict({"image": red}, params=PARAMS) == captions[:1]  # dict of scalars
    assert model.predict(red, params=PARAMS) == captions[:1]  # one image
    assert model.predict([red, files["green"].read_bytes()], params=PARAMS) == captions  # a list of images
    assert model.predict(pd.DataFrame({"image": [red, str(files["green"])]}), params=PARAMS) == captions
    answer = direct(library, files, [("red", QUESTION)])
    assert model.predict({"image": red, "question": QUESTION}, params=PARAMS) == answer
    # a single question next to a list of images asks every image
    both = direct(library, files, [("red", QUESTION), ("green", QUESTION)])
    assert model.predict({"image": [red, str(files["green"])], "question": QUESTION}, params=PARAMS) == both
    assert model.predict(pd.DataFrame({"image": []}), params=PARAMS) == []


@pytest.mark.parametrize("bad, message", [
    ({"image": ["{red}"], "questoin": ["what?"]}, r"unknown input column\(s\) \['questoin'\]"),
    ({"img": ["{red}"]}, r"unknown input column\(s\) \['img'\]"),
    ([{"image": "{red}"}, {"image": "{red}", "prompt": "x"}], r"row 1: unknown input column\(s\) \['prompt'\]"),
    ({"image": ["{red}", "{red}"], "question": ["a", "b", "c"]}, "different lengths"),
    ({"image": ["{red}", "{dir}/notes.png"]}, r"row 1: image '.*notes.png' is not a readable image"),
    ({"image": ["{red}", "{red}", "photo.jpg"]}, r"row 2: image 'photo.jpg': no such file \(relative to"),
    ({"image": ["{s3}/missing.png"]}, r"row 0: image 's3://.*/missing.png': no such file"),
    ({"image": ["https://example.com/cat.jpg"]}, "row 0: .*URLs are not fetched"),
    ({"image": [b"\x89PNG broken"]}, r"row 0: image 11 bytes is not a readable image"),
    ({"image": ["{red}", None]}, "row 1: no 'image'"),
    ({"image": [3]}, "row 0: image must be bytes, a base64 string, a path or an s3:// URI, got int"),
])
def test_bad_input_fails_clearly_naming_the_row_or_column(served, bad, message):
    model, _, files, s3 = served

    def fill(v):
        if isinstance(v, str):
            return v.format(red=files["red"], dir=files["red"].parent, s3=s3)
        if isinstance(v, list):
            return [fill(x) for x in v]
        if isinstance(v, dict):
            return {k: fill(x) for k, x in v.items()}
        return v

    with pytest.raises(InputError, match=message):
        model.predict(fill(bad), params=PARAMS)


def test_registered_version_documents_its_input(served):
    model, _, _, _ = served
    assert model.metadata.signature.inputs is None  # MLflow must not reshape or drop columns before predict
    assert [p.name for p in model.metadata.signature.params.params] == ["num_beams", "max_new_tokens"]
    assert "'question'" in model.metadata.metadata["vlm_input"]
