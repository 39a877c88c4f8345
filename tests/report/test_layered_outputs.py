"""`layerloop decompose` as designers and batch users meet it: RGBA mattes, PSD and ORA files reopened with
psd-tools and pyora, folders / globs / committed rounds, resuming, failures; `layerloop rebrand`."""
from __future__ import annotations

import json

import numpy as np
from prefect import flow  # noqa: F401 - sets up Prefect logging on the real stderr, not on CliRunner's temporary one
from PIL import Image
from typer.testing import CliRunner

from layerloop.flows.cli.main import app


def _photo(tmp_path, seed: int, size=(80, 60), name=None):
    from layerloop.models.synthetic import render_triplet

    path = tmp_path / (name or f"photo{seed}.jpg")
    render_triplet(seed, 64)[0]["composite"].resize(size).save(path, quality=90)
    return path


def _run(args, tiny_adapter, config_file):
    return CliRunner().invoke(app, ["decompose", *args, "--adapter", tiny_adapter["adapter_dir"],
                                    "--config", str(config_file)])


def test_a_photo_gives_rgba_psd_and_ora_that_reopen_with_their_layers(tmp_path, tiny_adapter, config_file):
    from psd_tools import PSDImage
    from pyora import Project

    photo, out = _photo(tmp_path, 7), tmp_path / "out"
    result = _run([str(photo), "--out", str(out), "--psd", "--ora"], tiny_adapter, config_file)
    assert result.exit_code == 0, result.output
    side = json.loads((out / "photo7.json").read_text())
    assert set(side["outputs"]) == {"logo", "object", "logo_rgba", "psd", "ora", "grid"}
    assert side["matting"] == "threshold_fill"  # models.matting.DEFAULT_METHOD, chosen on the dev split
    assert 0 < side["qa"]["recomposition_psnr_db"] < 100 and 0 < side["qa"]["recomposition_error"] < 1
    assert "recomposition" in result.output
    rgba = Image.open(out / "photo7.logo.rgba.png")
    assert rgba.mode == "RGBA" and rgba.size == (80, 60)
    obj = np.asarray(Image.open(out / "photo7.object.png").convert("RGBA"), int)

    psd = PSDImage.open(out / "photo7.psd")
    assert psd.size == (80, 60)
    assert [(layer.name, layer.visible) for layer in psd] == [("input (reference)", False), ("object", True),
                                                              ("logo", True)]
    by_name = {layer.name: layer for layer in psd}
    logo = Image.new("RGBA", (80, 60), (0, 0, 0, 0))
    logo.paste(by_name["logo"].topil(), by_name["logo"].bbox[:2])
    assert (np.asarray(logo)[..., 3] == np.asarray(rgba)[..., 3]).all()
    assert (np.asarray(by_name["object"].topil(), int) == obj).all()
    reference = np.asarray(by_name["input (reference)"].topil().convert("RGB"), int)
    assert np.abs(reference - np.asarray(Image.open(photo).convert("RGB"), int)).max() == 0

    ora = Project.load(str(out / "photo7.ora"))
    assert ora.dimensions == (80, 60)
    assert [c.name for c in ora.children] == ["logo", "object", "input (reference)"]  # top first
    assert (np.asarray(ora.get_by_path("/logo").get_image_data())[..., 3] == np.asarray(rgba)[..., 3]).all()


def test_folders_globs_and_rounds_in_batches_resumed_with_failures_listed(tmp_path, tiny_adapter, config_file,
                                                                          two_round_store):
    folder = tmp_path / "photos"
    folder.mkdir()
    for seed in (1, 2, 3):
        _photo(folder, seed)
    (folder / "notes.txt").write_text("not an image, not picked up")
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    other = _photo(tmp_path, 4, name="extra.png")
    out = tmp_path / "out"
    args = [str(folder), str(tmp_path / "ex*.png"), "round:0", "--out", str(out), "--no-qa"]
    first = _run(args, tiny_adapter, config_file)
    assert first.exit_code == 1, first.output  # broken.png failed, the others did not
    assert "1 of 9 input(s) failed" in first.output and "broken.png: not a readable image" in first.output
    done = sorted(p.name for p in out.glob("*.json"))
    assert len(done) == 8 and "extra.json" in done and any(n.startswith("seed-") for n in done)
    side = json.loads((out / "extra.json").read_text())
    assert side["input"] == str(other) and "qa" not in side
    assert json.loads(next(out.glob("seed-*.json")).read_text())["input"].startswith("round:0/seed-")
    assert "decompose 9/9 (100 %)" in first.output and "images/s" in first.output

    stamp = (out / "photo1.logo.png").stat().st_mtime_ns
    again = _run(args, tiny_adapter, config_file)
    assert again.exit_code == 1 and "8 skipped (done before)" in again.output
    assert (out / "photo1.logo.png").stat().st_mtime_ns == stamp
    (out / "photo2.object.png").unlink()  # an input whose outputs are incomplete is redone
    (folder / "broken.png").unlink()
    third = _run(args, tiny_adapter, config_file)
    assert third.exit_code == 0, third.output
    assert "7 skipped (done before)" in third.output and (out / "photo2.object.png").is_file()
    forced = _run(args + ["--overwrite"], tiny_adapter, config_file)
    assert forced.exit_code == 0 and "skipped" not in forced.output


def test_bad_inputs_and_options_are_one_error_line(tmp_path, tiny_adapter, config_file, two_round_store):
    empty = tmp_path / "empty"
    empty.mkdir()
    for args, message in (([str(empty)], "holds no images"), ([str(tmp_path / "nothing*.png")], "matches no file"),
                          (["round:7"], "round 7 is not committed"), ([str(empty), "--matting", "magic"], "--matting")):
        result = _run([*args, "--out", str(tmp_path / "o")], tiny_adapter, config_file)
        assert result.exit_code == 2 and message in result.output, result.output


def test_rebrand_puts_a_new_logo_on_the_decomposed_object(tmp_path, tiny_adapter, config_file):
    from layerloop.models.synthetic import render_triplet

    photo = _photo(tmp_path, 5, size=(90, 50))
    render_triplet(9, 32)[0]["logo"].save(tmp_path / "new-logo.png")
    out = tmp_path / "rebranded.png"
    result = CliRunner().invoke(app, ["rebrand", str(photo), str(tmp_path / "new-logo.png"), "--out", str(out),
                                      "--adapter", tiny_adapter["adapter_dir"], "--config", str(config_file)])
    assert result.exit_code == 0, result.output
    assert Image.open(out).size == (90, 50)
    side = json.loads(out.with_name("rebranded.png.json").read_text())
    assert side["composite"]["original_size"] == [90, 50] and side["logo"]["input"].endswith("new-logo.png")
    assert 0 < side["qa"]["old_logo_recomposition_psnr_db"] < 100
    missing = CliRunner().invoke(app, ["rebrand", str(photo), str(tmp_path / "none.png"), "--out", str(out),
                                       "--config", str(config_file)])
    assert missing.exit_code == 2 and "none.png: no such file" in missing.output
