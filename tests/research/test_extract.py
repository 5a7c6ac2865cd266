"""Image-based feature variants: LoG / wavelet features and shells (minus other lesions) in the recipes' naming,
and a second segmentation's table, from the documented image-folder layout."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import SimpleITK as sitk

from node.research.columns import describe_column
from node.research.extract import extract_folder, rename_filtered


def test_pyradiomics_filtered_names_map_to_the_recipe_columns() -> None:
    name = rename_filtered("log-sigma-2-0-mm-3D_glcm_Contrast", "t2")
    assert name == "t2_log-sigma-2-0-mm_glcm_Contrast"
    assert describe_column(name).sigma_mm == 2.0
    assert rename_filtered("wavelet-LLH_firstorder_Mean", "t1ce") == "t1ce_wavelet-LLH_firstorder_Mean"
    assert rename_filtered("original_glcm_Contrast", "t1ce") is None


def _img(arr: np.ndarray) -> sitk.Image:
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing((1.0, 1.0, 1.0))
    return img


def test_extract_folder_writes_filtered_shell_and_second_segmentation_tables(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    shape = (28, 28, 28)
    zz, yy, xx = np.indices(shape)
    labels = np.zeros(shape, dtype=np.uint16)
    labels[(zz - 14) ** 2 + (yy - 14) ** 2 + (xx - 9) ** 2 <= 16] = 1
    labels[(zz - 14) ** 2 + (yy - 14) ** 2 + (xx - 19) ** 2 <= 9] = 2
    seg2 = labels.copy()
    seg2[(zz - 14) ** 2 + (yy - 14) ** 2 + (xx - 9) ** 2 <= 20] = 1
    case = tmp_path / "images" / "P001"
    case.mkdir(parents=True)
    image = (rng.normal(size=shape) + 3.0 * (labels > 0)).astype(np.float32)
    sitk.WriteImage(_img(image), str(case / "t1ce.nii.gz"))
    sitk.WriteImage(_img(labels), str(case / "lesions.nii.gz"))
    sitk.WriteImage(_img(seg2), str(case / "lesions_seg2.nii.gz"))
    written = extract_folder(tmp_path / "images", tmp_path / "out", sigmas_mm=(1.0,), wavelet=True, shells_mm=(2,))
    assert [p.name for p in written] == ["features.csv", "features_seg2.csv"]
    table = pd.read_csv(written[0])
    assert list(table["segment_number"]) == [1, 2]
    columns = set(table.columns)
    assert "t1ce_log-sigma-1-0-mm_glcm_Contrast" in columns
    assert "t1ce_wavelet-LLH_firstorder_Mean" in columns
    assert "t1ce_shell2mm_firstorder_Mean" in columns and "t1ce_firstorder_Mean" in columns
    assert table["t1ce_log-sigma-1-0-mm_glcm_Contrast"].notna().all()
    assert table["t1ce_shell2mm_firstorder_Mean"].notna().all()  # shells of both lesions (tests/research/test_shells.py
    # checks at the mask level that a neighbouring lesion is left out of a shell)
    seg2_table = pd.read_csv(written[1])
    assert seg2_table.loc[0, "shape_VoxelVolume"] > table.loc[0, "shape_VoxelVolume"]  # the larger 2nd outline
