"""Training data: case readers and validation, the synthetic PET/CT phantom, and the prepared-dataset format.

The trainer reads prepared data only, through `veloxseg_train.data.prepared`:

    from veloxseg_train.data.prepared import load_dataset, split_cases, load_case
    dataset = load_dataset("PREP")                        # dict from PREP/dataset.json, format checked
    case = load_case("PREP", split_cases(dataset, "train")[0])  # PreparedCase(ct, pet, label, spacing_xyz, ...)

Formats, commands and the phantom: docs/data.md.
"""
