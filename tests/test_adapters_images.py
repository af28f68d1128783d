"""2-D families (Kaggle brain sets, OCT2017, IDRiD, LGG tifs) in synthetic published layouts, and the
2-D bad inputs: extension lies, RGB where grey is expected, 16-bit PNG, truncated jpg, bad masks."""

from __future__ import annotations

import numpy as np
import pytest

from benchmark.errors import DataError
from benchmark.registry import get_dataset
from datasets.base import prepare
from datasets.images import read_binary_mask, read_grey, sniff_format
from datasets.recipes_paper import get_recipe
from datasets.splits import proxyano_brain, proxyano_idrid, proxyano_oct
from tests.layouts import grey_image, write_image, write_oct


def one_line(err: Exception, *needles: str) -> None:
    assert "\n" not in str(err), str(err)
    for n in needles:
        assert n in str(err), str(err)


def test_sniffing_ignores_extensions(tmp_path):
    g = grey_image()
    png_as_jpg = write_image(tmp_path / "Y1.jpg", g, "PNG")
    rgba = write_image(tmp_path / "Y2.JPG", np.dstack([g, g, g, np.full_like(g, 255)]), "PNG")
    assert sniff_format(png_as_jpg) == "PNG"
    assert np.array_equal(read_grey(png_as_jpg), g.astype(np.float32))
    assert np.allclose(read_grey(rgba), g, atol=1)
    (tmp_path / "x.jpg").write_bytes(b"hello world, not an image")
    with pytest.raises(DataError) as e:
        read_grey(tmp_path / "x.jpg")
    one_line(e.value, "x.jpg", "not a supported image")
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(DataError) as e:
        read_grey(tmp_path / "empty.png")
    one_line(e.value, "empty.png", "empty file")


def test_bad_2d_inputs(tmp_path):
    from PIL import Image

    colour = np.zeros((40, 40, 3), np.uint8)
    colour[..., 0] = 200
    colour[..., 2] = 30
    p = write_image(tmp_path / "CNV-1-1.jpeg", colour)
    with pytest.raises(DataError) as e:
        read_grey(p, colour="reject")
    one_line(e.value, "CNV-1-1.jpeg", "where a greyscale image is expected")
    assert read_grey(p, colour="convert").shape == (40, 40)  # Kaggle sets: RGB → grey
    grey_rgb = write_image(tmp_path / "g.jpeg", np.dstack([grey_image()] * 3))
    assert read_grey(grey_rgb, colour="reject").shape == (48, 64)  # grey stored as RGB passes
    p16 = tmp_path / "deep.png"
    Image.fromarray((grey_image().astype(np.uint16) * 200)).save(p16)
    with pytest.raises(DataError) as e:
        read_grey(p16)
    one_line(e.value, "deep.png", "16/32-bit")
    t = write_image(tmp_path / "t.jpg", grey_image(200, 200))
    t.write_bytes(t.read_bytes()[:400])
    with pytest.raises(DataError) as e:
        read_grey(t)
    one_line(e.value, "t.jpg", "truncated or corrupt JPEG")
    m = write_image(tmp_path / "m.png", np.array([[0, 255], [128, 0]], np.uint8), "PNG")
    with pytest.raises(DataError) as e:
        read_binary_mask(m, values=(0, 255))
    one_line(e.value, "m.png", "unknown mask value(s) [128]")


def test_kaggle_yes_no_and_four_class_merged(tmp_path):
    for i in range(3):
        write_image(tmp_path / "brain_tumor_dataset" / "yes" / f"Y{i}.jpg", grey_image(seed=i))
        write_image(tmp_path / "brain_tumor_dataset" / "no" / f"{i} no.jpeg", grey_image(seed=10 + i))
    for part in ("Training", "Testing"):
        for cls in ("glioma_tumor", "no_tumor"):
            write_image(tmp_path / "archive" / part / cls / "image(1).jpg", np.dstack([grey_image(seed=len(part + cls))] * 3))
    subs = get_dataset("brain_mri_tumor")(tmp_path).subjects()
    by = {s.id: s for s in subs}
    assert len(subs) == 10
    assert by["yes_no/yes/Y0"].pathology == "tumour" and by["yes_no/no/0 no"].pathology == "healthy"
    assert by["four_class/Training/glioma_tumor/image(1)"].split == "train"
    assert by["four_class/Testing/no_tumor/image(1)"].pathology == "healthy"
    only = get_dataset("brain_tumor_detection")(tmp_path / "brain_tumor_dataset").subjects()
    assert {s.id for s in only} == {"yes/Y0", "yes/Y1", "yes/Y2", "no/0 no", "no/1 no", "no/2 no"}
    a = get_dataset("brain_mri_tumor")(tmp_path)
    store = prepare(a, get_recipe("proxyano_grey256"), cache_dir=tmp_path / "c", split_fn=proxyano_brain())
    m = store.manifest
    assert set(m["split"]) <= {"train", "test"} and store.images.shape[1:] == (1, 256, 256)
    assert (m[m.split == "train"]["label"] == 0).all()
    test = m[m.split == "test"]
    assert (test.label == 1).sum() == (test.label == 0).sum()  # balanced test set
    (tmp_path / "e" / "yes").mkdir(parents=True)
    (tmp_path / "e" / "no").mkdir()
    with pytest.raises(DataError) as e:
        prepare(get_dataset("brain_tumor_detection")(tmp_path / "e"), get_recipe("proxyano_grey256"),
                cache_dir=tmp_path / "c")
    one_line(e.value, "no brain_tumor_detection subjects found")


def test_oct_merges_test_and_val_and_rejects_colour(tmp_path):
    write_oct(tmp_path, "train", "NORMAL", 3)
    write_oct(tmp_path, "train", "CNV", 2)
    write_oct(tmp_path, "test", "DME", 2)
    write_oct(tmp_path, "val", "NORMAL", 1, start=50)
    bad = write_image(tmp_path / "OCT2017" / "test" / "DRUSEN" / "DRUSEN-77-1.jpeg",
                      np.dstack([grey_image(), np.zeros((48, 64), np.uint8), grey_image()]))
    a = get_dataset("oct2017")(tmp_path)
    subs = a.subjects()
    assert {s.split for s in subs} == {"train", "test"}
    assert {s.id.split("/")[0] for s in subs if s.split == "test"} == {"test", "val"}
    store = prepare(a, get_recipe("proxyano_grey256"), cache_dir=tmp_path / "c", split_fn=proxyano_oct(),
                    skip_bad=True)
    m = store.manifest
    assert (m.split == "train").sum() == 3 and (m[m.split == "train"].label == 0).all()
    assert (m.split == "test").sum() == 3  # 2 DME + 1 NORMAL (val); the colour DRUSEN file is skipped
    assert len(store.meta["skipped"]) == 1 and str(bad) in store.meta["skipped"][0]
    (tmp_path / "OCT2017" / "test" / "FOO").mkdir()
    with pytest.raises(DataError) as e:
        a.subjects()
    one_line(e.value, "FOO", "unexpected class folder")


def test_idrid_layout_masks_tiles_and_grading(tmp_path):
    from PIL import Image

    seg = tmp_path / "A. Segmentation"
    rgb = np.dstack([grey_image(60, 90, s) for s in range(3)])
    write_image(seg / "1. Original Images" / "a. Training Set" / "IDRiD_01.jpg", rgb)
    write_image(seg / "1. Original Images" / "b. Testing Set" / "IDRiD_55.jpg", rgb)
    gt = seg / "2. All Segmentation Groundtruths"
    for n, t, folder in (("01", "MA", "1. Microaneurysms"), ("01", "OD", "5. Optic Disc"), ("55", "EX", "3. Hard Exudates")):
        m = np.zeros((60, 90), np.uint8)
        if t == "OD":
            m[40:50, 60:80] = 1
        else:
            m[10:20, 30:40] = 1
        im = Image.fromarray(m, mode="P")
        im.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
        (gt / ("a. Training Set" if n == "01" else "b. Testing Set") / folder).mkdir(parents=True, exist_ok=True)
        im.save(gt / ("a. Training Set" if n == "01" else "b. Testing Set") / folder / f"IDRiD_{n}_{t}.tif")
    grading = tmp_path / "B. Disease Grading"
    write_image(grading / "1. Original Images" / "a. Training Set" / "IDRiD_001.jpg", rgb)
    write_image(grading / "1. Original Images" / "a. Training Set" / "IDRiD_002.jpg", rgb)
    write_image(grading / "1. Original Images" / "b. Testing Set" / "IDRiD_001.jpg", rgb)
    (grading / "2. Groundtruths").mkdir(parents=True)
    (grading / "2. Groundtruths" / "a. IDRiD_Disease Grading_Training Labels.csv").write_text(
        "Image name,Retinopathy grade,Risk of macular edema,,\r\nIDRiD_001,0,0,,\r\nIDRiD_002,3,1,,\r\n")
    (grading / "2. Groundtruths" / "b. IDRiD_Disease Grading_Testing Labels.csv").write_text(
        "Image name,Retinopathy grade,Risk of macular edema\r\nIDRiD_001,2,0\r\n")
    a = get_dataset("idrid")(tmp_path)
    by = {s.id: s for s in a.subjects()}
    assert set(by) == {"A-IDRiD_01", "A-IDRiD_55", "B-train-IDRiD_001", "B-train-IDRiD_002", "B-test-IDRiD_001"}
    assert by["B-train-IDRiD_001"].pathology == "healthy" and by["B-train-IDRiD_002"].pathology == "dr_grade3"
    vol = a.load(by["A-IDRiD_01"])
    assert vol.lesion.sum() == 100 and vol.lesion[45, 70] == 0  # MA counts, the optic disc does not
    assert vol.channel("green").shape == (60, 90)
    store = prepare(a, get_recipe("proxyano_idrid_tiles256"), cache_dir=tmp_path / "c", split_fn=proxyano_idrid())
    m = store.manifest
    assert (m.split == "train").sum() == 9 and set(m[m.split == "train"].subject) == {"B-train-IDRiD_001"}
    assert (m.split == "test").sum() == 18 and sorted(set(m.slice)) == list(range(9))
    assert m[m.subject == "A-IDRiD_55"].label.sum() >= 1


def test_idrid_mask_shape_mismatch(tmp_path):
    from PIL import Image

    seg = tmp_path / "A. Segmentation"
    write_image(seg / "1. Original Images" / "a. Training Set" / "IDRiD_03.jpg", np.dstack([grey_image(60, 90)] * 3))
    d = seg / "2. All Segmentation Groundtruths" / "a. Training Set" / "2. Haemorrhages"
    d.mkdir(parents=True)
    Image.fromarray(np.zeros((30, 45), np.uint8), mode="P").save(d / "IDRiD_03_HE.tif")
    a = get_dataset("idrid")(tmp_path)
    with pytest.raises(DataError) as e:
        a.load(a.subjects()[0])
    one_line(e.value, "IDRiD_03_HE.tif", "mask shape (30, 45) differs")


def _write_lgg_slice(folder, n, *, mask_value=255, mask_shape=None, img_shape=(32, 32)):
    import tifffile

    folder.mkdir(parents=True, exist_ok=True)
    stem = f"{folder.name}_{n}"
    rgb = np.dstack([grey_image(*img_shape, seed=n + c) for c in range(3)])
    tifffile.imwrite(folder / f"{stem}.tif", rgb)
    m = np.zeros(mask_shape or img_shape, np.uint8)
    m[5:10, 5:12] = mask_value
    tifffile.imwrite(folder / f"{stem}_mask.tif", m)


def test_lgg_gaps_and_bad_slices(tmp_path):
    root = tmp_path / "kaggle_3m"
    good = root / "TCGA_CS_0001_19990101"
    for n in (3, 9, 12):  # gaps in the numbering: the adapter globs
        _write_lgg_slice(good, n)
    bad_val = root / "TCGA_CS_0002_19990101"
    _write_lgg_slice(bad_val, 1, mask_value=7)
    bad_shape = root / "TCGA_CS_0003_19990101"
    _write_lgg_slice(bad_shape, 1, mask_shape=(16, 16))
    no_mask = root / "TCGA_CS_0004_19990101"
    _write_lgg_slice(no_mask, 2)
    (no_mask / "TCGA_CS_0004_19990101_2_mask.tif").unlink()
    a = get_dataset("lgg")(tmp_path)
    by = {s.id: s for s in a.subjects()}
    assert by["TCGA_CS_0001_19990101"].meta["slice_numbers"] == [3, 9, 12]
    vol = a.load(by["TCGA_CS_0001_19990101"])
    from datasets.recipes import axial
    assert vol.channel("flair").shape == (32, 32, 3)
    assert np.array_equal(axial(vol.channel("flair"), 1), np.dstack([grey_image(32, 32, seed=9 + c) for c in range(3)])[..., 1])
    for sid, needles in (("TCGA_CS_0002_19990101", ("_1_mask.tif", "unknown mask value(s) [7]")),
                         ("TCGA_CS_0003_19990101", ("_1_mask.tif", "mask shape (16, 16) differs")),
                         ("TCGA_CS_0004_19990101", ("_2_mask.tif", "mask file missing"))):
        with pytest.raises(DataError) as e:
            a.load(by[sid])
        one_line(e.value, *needles)
    store = prepare(a, get_recipe("lgg_flair"), cache_dir=tmp_path / "c", skip_bad=True)
    assert list(store.manifest["slice"]) == [3, 9, 12] and len(store.meta["skipped"]) == 3


def test_phash_groups_near_duplicates(tmp_path):
    from PIL import Image

    from datasets.splits import near_duplicate_groups, phash

    rng = np.random.default_rng(3)
    yy, xx = np.mgrid[:120, :120]
    imgs = []
    for k in range(3):
        a = np.zeros((120, 120), np.float32)
        for _ in range(6):
            cy, cx, r = rng.uniform(20, 100, 2).tolist() + [rng.uniform(8, 25)]
            a += 120 * (((yy - cy) ** 2 + (xx - cx) ** 2) < r**2)
        imgs.append(write_image(tmp_path / f"i{k}.png", np.clip(a, 0, 255).astype(np.uint8), "PNG"))
    Image.open(imgs[0]).resize((200, 200)).save(tmp_path / "dup.jpg", quality=80)  # rescaled, re-encoded copy
    groups = near_duplicate_groups([phash(p) for p in imgs + [tmp_path / "dup.jpg"]])
    assert groups[3] == groups[0] and len({groups[0], groups[1], groups[2]}) == 3


@pytest.mark.parametrize("name", ["oct2017", "idrid", "lgg", "fastmri_plus"])
def test_empty_missing_and_foreign_roots_are_one_line(name, tmp_path, capsys, monkeypatch):
    from benchmark.cli import main

    monkeypatch.delenv("PHBENCH_FASTMRI_PLUS", raising=False)
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / ".DS_Store").write_bytes(b"\0")  # hidden files do not count as content
    with pytest.raises(DataError) as e:
        get_dataset(name)(tmp_path / "empty").subjects()
    one_line(e.value, str(tmp_path / "empty"), f"{name} root folder is empty", "expected layout")
    with pytest.raises(DataError) as e:
        get_dataset(name)(tmp_path / "nope").subjects()
    one_line(e.value, f"{name} root folder does not exist")
    (tmp_path / "other" / "misc").mkdir(parents=True)
    (tmp_path / "other" / "misc" / "notes.txt").write_text("not a dataset")
    for cmd in (["info", name, "--root", str(tmp_path / "other"), "--preview", str(tmp_path / "p.png")],
                ["prepare", name, "--root", str(tmp_path / "other"), "--store", str(tmp_path / "s")],
                ["prepare", name, "--root", str(tmp_path / "empty"), "--store", str(tmp_path / "s")]):
        assert main(["data", *cmd]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1, err
        expect = ("empty" if "empty" in cmd[3] else
                  "fastMRI+ annotations not found" if name == "fastmri_plus" else f"no {name} subjects found")
        assert expect in err[0], err
    assert not (tmp_path / "p.png").exists() and not (tmp_path / "s").exists()


def test_kaggle_colour_picture_and_idrid_odd_mask_values_are_one_line(tmp_path):
    colour = np.zeros((40, 40, 3), np.uint8)
    colour[..., 0] = 220
    write_image(tmp_path / "kaggle" / "yes" / "Y1.jpg", colour)
    write_image(tmp_path / "kaggle" / "no" / "N1.jpg", np.dstack([grey_image(40, 40)] * 3))  # grey as RGB: fine
    a = get_dataset("brain_tumor_detection")(tmp_path / "kaggle")
    by = {s.id.split("/")[-1]: s for s in a.subjects()}
    assert a.load(by["N1"]) is not None
    with pytest.raises(DataError) as e:
        a.load(by["Y1"])
    one_line(e.value, "Y1.jpg", "where a greyscale image is expected")
    m = write_image(tmp_path / "mask.png", np.array([[0, 255], [128, 0]], np.uint8), "PNG")
    with pytest.raises(DataError) as e:
        read_binary_mask(m, values=(0, 1, 255))
    one_line(e.value, "mask.png", "unknown mask value(s) [128]")


def test_idrid_regrading_rebuilds_the_store(tmp_path):
    rgb = np.dstack([grey_image(60, 90, s) for s in range(3)])
    grading = tmp_path / "B. Disease Grading"
    write_image(grading / "1. Original Images" / "a. Training Set" / "IDRiD_001.jpg", rgb)
    csv = grading / "2. Groundtruths" / "a. IDRiD_Disease Grading_Training Labels.csv"
    csv.parent.mkdir(parents=True)
    csv.write_text("Image name,Retinopathy grade,Risk of macular edema\r\nIDRiD_001,0,0\r\n")
    rec = get_recipe("proxyano_grey256")
    first = prepare(get_dataset("idrid")(tmp_path), rec, cache_dir=tmp_path / "c")
    assert set(first.manifest["pathology"]) == {"healthy"}
    csv.write_text("Image name,Retinopathy grade,Risk of macular edema\r\nIDRiD_001,3,1\r\n")
    second = prepare(get_dataset("idrid")(tmp_path), rec, cache_dir=tmp_path / "c")
    assert second.path != first.path and set(second.manifest["pathology"]) == {"dr_grade3"}
